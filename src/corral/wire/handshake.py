"""Mutual proof of a shared secret at the start of a connection, before anything is trusted.

The side that introduces itself sends ``Hello`` with a fresh nonce. The answering side replies
with its own nonce and an HMAC proving it knows the secret; the introducer checks it and
answers with its HMAC. Each proof names its role, the realm (a computation, a queue), the
introducer and both nonces, so a proof cannot be replayed on another connection or reflected
back to its author. Until both proofs hold, a connection carries small frames of plain
msgpack values: nothing is unpickled, nothing is acted on. Callers bound the exchange with a
timeout. The three messages belong to every protocol that uses the handshake (each gives
them codes in its own ``MessageSet``). The secret may differ per introducer: the answering
side then derives it from the peer the Hello claims (the agent link proves each node's own
token this way).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from corral.errors import Unauthorized

if TYPE_CHECKING:
    # Only for annotations: the agent's message set (imported by codec) holds these messages.
    from corral.wire.codec import FramedConnection

NONCE_BYTES: Final = 32


class AuthenticationFailed(Unauthorized):
    """The peer could not prove it holds the secret (or does not speak the protocol)."""


@dataclass(frozen=True, slots=True)
class Hello:
    """The introducer: the protocol version, the realm it asks for, who it is, its nonce."""

    version: int
    realm: str
    peer: str
    node: str
    pid: int
    nonce: bytes


@dataclass(frozen=True, slots=True)
class Challenge:
    """The answering side's nonce, and its proof that it knows the secret."""

    nonce: bytes
    proof: bytes


@dataclass(frozen=True, slots=True)
class Proof:
    """The introducer's proof that it knows the secret."""

    proof: bytes


T = TypeVar("T", Hello, Challenge, Proof)


def new_secret() -> str:
    """A random secret (hex, 256 bits)."""
    return os.urandom(32).hex()


def new_hello(version: int, realm: str, peer: str, node: str) -> Hello:
    return Hello(version, realm, peer, node, os.getpid(), os.urandom(NONCE_BYTES))


def _proof(secret: str, role: bytes, hello: Hello, first: bytes, second: bytes) -> bytes:
    message = b"\0".join([role, hello.realm.encode(), hello.peer.encode(), first, second])
    return hmac.new(secret.encode(), message, hashlib.sha256).digest()


async def _one(conn: FramedConnection[Any], kind: type[T]) -> T:
    batch = await conn.read_batch()
    if len(batch) != 1 or not isinstance(batch[0], kind):
        got = ", ".join(type(msg).__name__ for msg in batch) or "nothing"
        raise AuthenticationFailed(f"expected {kind.__name__} from {conn.peer}, got {got}")
    return batch[0]


async def answer_hello(
    conn: FramedConnection[Any], secret: str | Callable[[str], str], realm: str, version: int
) -> Hello:
    """The answering side: read Hello, prove, check the introducer's proof; return Hello.

    ``secret`` is the secret, or a function giving the secret of the peer a Hello claims.
    """
    hello = await _one(conn, Hello)
    if hello.version != version:
        raise AuthenticationFailed(
            f"{hello.peer} speaks protocol version {hello.version}, this side {version}"
        )
    if hello.realm != realm:
        raise AuthenticationFailed(f"{hello.peer} asks for {hello.realm!r}, not {realm!r}")
    if len(hello.nonce) != NONCE_BYTES:
        raise AuthenticationFailed(f"{hello.peer} sent a nonce of the wrong size")
    if not isinstance(secret, str):
        secret = secret(hello.peer)
    nonce = os.urandom(NONCE_BYTES)
    await conn.send_now(Challenge(nonce, _proof(secret, b"answer", hello, hello.nonce, nonce)))
    proof = await _one(conn, Proof)
    expected = _proof(secret, b"introduce", hello, nonce, hello.nonce)
    if not hmac.compare_digest(proof.proof, expected):
        raise AuthenticationFailed(f"{hello.peer} at {conn.peer} has a wrong secret")
    conn.mark_authenticated()
    return hello


async def send_hello(conn: FramedConnection[Any], secret: str, hello: Hello) -> None:
    """The introducing side: send Hello, check the answer's proof, then prove."""
    await conn.send_now(hello)
    challenge = await _one(conn, Challenge)
    expected = _proof(secret, b"answer", hello, hello.nonce, challenge.nonce)
    if not hmac.compare_digest(challenge.proof, expected):
        raise AuthenticationFailed(f"the peer at {conn.peer} has a wrong secret")
    await conn.send_now(Proof(_proof(secret, b"introduce", hello, challenge.nonce, hello.nonce)))
    conn.mark_authenticated()
