"""Secrets kept in files private to their user: API and agent tokens, queue secrets; and
files replaced whole, so that a reader never sees half of one (:func:`replace_file`).

A secret file is made once, at random, never readable by group or others, and never half
written; a file that group or others may read is refused with the command that fixes it.

Each node's agent has a token of its own, derived from the dispatcher's agent secret
(``HOME/agent_token``) and the node's id by :func:`node_token`: the driver that creates a
node hands its agent that token only, the hub recomputes it for the node id a Hello
claims, and nothing new is stored. A node's token proves that node and no other, and a
leaked one lets its holder act as that one node only.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from corral.errors import CorralError


def load_or_create_token(path: Path) -> str:
    """Read the token at ``path``, or create one there, private to this user.

    Refuses a token file that group or others may access: anyone who can read it can run
    any command on every node. Creation never leaves a window where the file is readable by
    others or half written: the token goes to a private temporary file that is then
    hard-linked into place (which fails, rather than overwrites, if another process won).
    """
    try:
        return _read_token(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(token + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temporary, path)
    except FileExistsError:
        return _read_token(path)  # another process created it first: use theirs
    finally:
        temporary.unlink(missing_ok=True)
    return token


def _read_token(path: Path) -> str:
    try:
        handle = path.open()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CorralError(f"cannot read the token file {path}: {exc.strerror}") from None
    with handle:
        mode = os.fstat(handle.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise CorralError(
                f"the token file {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
            )
        token = handle.read().strip()
    if not token:
        raise CorralError(f"the token file {path} is empty; delete it to get a new token")
    return token


def node_token(secret: str, node_id: str) -> str:
    """The token of the agent of ``node_id``: HMAC-SHA256 of the node id under ``secret``."""
    message = b"corral agent token\x00" + node_id.encode("utf-8", "surrogatepass")
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def replace_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Put ``data`` in ``path`` (created with ``mode``), whole or not at all, durably."""
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode does nothing to a file left by a crash
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    partial.replace(path)


def write_secret(path: Path, secret: str) -> None:
    """Write ``secret`` to ``path``, private to this user, replacing what was there."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode does nothing to a file that already existed
        os.write(fd, secret.encode() + b"\n")
    finally:
        os.close(fd)
