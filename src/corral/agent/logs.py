"""Per-process log files: where they live and how a chunk of one is read.

Each process appends its stdout and stderr to ``STATE_DIR/logs/<name>.stdout`` and
``.stderr``, where ``<name>`` is its upid made safe for a file name. Every round of a process
appends to the same pair, so a restarted service keeps one history. The agent never deletes
logs: what it reads back is whatever is on disk, even for a forgotten process.
"""

from __future__ import annotations

import hashlib
import os
import string
from pathlib import Path
from typing import Final

from corral.wire.messages import LogChunk

MAX_CHUNK: Final = 4 << 20
"""The most a single ReadLog answer carries, whatever the limit asked (frames stay small)."""

_MAX_NAME: Final = 200  # leaves room for suffixes under the usual 255-byte name limit
_SAFE: Final = frozenset(string.ascii_letters + string.digits + "-_.")


class UnsafeName(ValueError):
    """A upid that cannot be turned into a file name (empty, or too long once escaped)."""


def safe_name(upid: str) -> str:
    """Escape ``upid`` into a file name: unique, no ``/``, no NUL, never ``.``/``..``.

    Anything outside ``[A-Za-z0-9._-]`` becomes ``%XX`` per UTF-8 byte, and so does a leading
    dot, so no name is hidden or climbs out of its directory.
    """
    if not upid:
        raise UnsafeName("an empty upid has no file name")
    out = []
    for i, char in enumerate(upid):
        if char in _SAFE and not (i == 0 and char == "."):
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
    name = "".join(out)
    if len(name) > _MAX_NAME:
        # Escaping can triple a name; keep it unique (and still readable at the start)
        # with a digest of the whole upid rather than refuse a upid the dispatcher took.
        digest = hashlib.sha256(upid.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        name = f"{name[: _MAX_NAME - 34]}~{digest}"
    return name


def log_path(state_dir: Path, upid: str, stream: str) -> Path:
    """``STATE_DIR/logs/<safe upid>.<stream>``; raises UnsafeName or ValueError."""
    if stream not in ("stdout", "stderr"):
        raise ValueError(f"unknown log stream {stream!r}")
    return state_dir / "logs" / f"{safe_name(upid)}.{stream}"


def open_for_append(path: Path) -> int:
    """A write-only, append-mode descriptor, created 0600, not inherited by accident."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)


def read_chunk(
    state_dir: Path, request_id: int, upid: str, stream: str, offset: int, limit: int
) -> LogChunk:
    """Answer a ReadLog: at most ``min(limit, MAX_CHUNK)`` bytes from ``offset``.

    A missing log reads as empty (the process may not have written yet) with size 0; a bad
    request comes back with ``error`` set instead of raising.
    """
    if offset < 0 or limit < 0:
        return LogChunk(request_id, b"", offset, 0, "offset and limit must not be negative")
    try:
        path = log_path(state_dir, upid, stream)
    except ValueError as exc:
        return LogChunk(request_id, b"", offset, 0, str(exc))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return LogChunk(request_id, b"", offset, 0, None)
    except OSError as exc:
        return LogChunk(request_id, b"", offset, 0, f"cannot read log: {exc.strerror}")
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, min(limit, MAX_CHUNK), offset) if offset < size else b""
    except OSError as exc:
        return LogChunk(request_id, b"", offset, 0, f"cannot read log: {exc.strerror}")
    finally:
        os.close(fd)
    return LogChunk(request_id, data, offset + len(data), size, None)
