"""Secrets kept in files private to their user: API and agent tokens, queue secrets.

A secret file is made once, at random, never readable by group or others, and never half
written; a file that group or others may read is refused with the command that fixes it.
"""

from __future__ import annotations

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
