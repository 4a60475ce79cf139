"""Mutual proof of the computation's secret, before a single pickle is read; TLS contexts.

The worker dials the client and sends ``Hello`` with a fresh nonce. The client answers with
its own nonce and an HMAC proving it knows the secret; the worker checks it and answers with
its HMAC. Each proof names its role, the computation, the worker and both nonces, so a proof
cannot be replayed on another connection or reflected back to its author. Until both proofs
hold, frames are small and carry msgpack values only: nothing is unpickled. Callers bound the
exchange with a timeout.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import ssl
from typing import Final, TypeVar

from corral.compute.errors import AuthenticationFailed
from corral.compute.messages import PROTOCOL_VERSION, Challenge, ComputeMessage, Hello, Proof
from corral.wire.codec import FramedConnection

NONCE_BYTES: Final = 32

ComputeConnection = FramedConnection[ComputeMessage]
T = TypeVar("T", bound=ComputeMessage)


def new_secret() -> str:
    """A random secret for a computation (hex, 256 bits)."""
    return os.urandom(32).hex()


def _proof(secret: str, role: bytes, hello: Hello, first: bytes, second: bytes) -> bytes:
    message = b"\0".join([role, hello.computation.encode(), hello.worker.encode(), first, second])
    return hmac.new(secret.encode(), message, hashlib.sha256).digest()


async def _one(conn: ComputeConnection, kind: type[T]) -> T:
    batch = await conn.read_batch()
    if len(batch) != 1 or not isinstance(batch[0], kind):
        raise AuthenticationFailed(f"expected {kind.__name__} from {conn.peer}")
    return batch[0]


async def prove_client(conn: ComputeConnection, secret: str, computation: str) -> Hello:
    """The client's side: read the worker's Hello, prove, check its proof; return the Hello."""
    hello = await _one(conn, Hello)
    if hello.version != PROTOCOL_VERSION:
        raise AuthenticationFailed(
            f"worker {hello.worker} speaks compute protocol {hello.version}, "
            f"this client {PROTOCOL_VERSION}"
        )
    if hello.computation != computation:
        raise AuthenticationFailed(f"worker {hello.worker} belongs to {hello.computation}")
    if len(hello.nonce) != NONCE_BYTES:
        raise AuthenticationFailed(f"worker {hello.worker} sent a nonce of the wrong size")
    nonce = os.urandom(NONCE_BYTES)
    await conn.send_now(Challenge(nonce, _proof(secret, b"client", hello, hello.nonce, nonce)))
    proof = await _one(conn, Proof)
    if not hmac.compare_digest(proof.proof, _proof(secret, b"worker", hello, nonce, hello.nonce)):
        raise AuthenticationFailed(f"worker {hello.worker} at {conn.peer} has a wrong secret")
    conn.mark_authenticated()
    return hello


async def prove_worker(conn: ComputeConnection, secret: str, hello: Hello) -> None:
    """The worker's side: send Hello, check the client's proof, then prove."""
    await conn.send_now(hello)
    challenge = await _one(conn, Challenge)
    expected = _proof(secret, b"client", hello, hello.nonce, challenge.nonce)
    if not hmac.compare_digest(challenge.proof, expected):
        raise AuthenticationFailed(f"the client at {conn.peer} has a wrong secret")
    await conn.send_now(Proof(_proof(secret, b"worker", hello, challenge.nonce, hello.nonce)))
    conn.mark_authenticated()


def new_hello(computation: str, worker: str, node: str) -> Hello:
    return Hello(PROTOCOL_VERSION, computation, worker, node, os.getpid(), os.urandom(NONCE_BYTES))


def server_context(certfile: str, keyfile: str | None) -> ssl.SSLContext:
    """The client's TLS context (it listens; workers dial it)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    return context


def pinned_context(certificate_pem: str) -> ssl.SSLContext:
    """The worker's TLS context: it trusts exactly the client's certificate.

    The certificate travels with the worker's configuration, so the pin replaces a host name
    check: a client may be reached by any address.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=certificate_pem)
    context.check_hostname = False
    return context
