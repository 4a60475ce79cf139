"""Per-process logs: written to a spool on tmpfs, kept on disk once they hold something.

Each process appends its stdout and stderr to ``STATE_DIR/logs/<name>.stdout`` and
``.stderr``, where ``<name>`` is its upid made safe for a file name. Every round of a process
appends to the same pair, so a restarted service keeps one history. What the agent reads back
is whatever is on disk, even for a process the dispatcher told it to forget. The logs of a
process that no longer runs here go once unwritten for ``retention`` seconds (the engine's
``log_retention``, a day by default, as long as the dispatcher keeps an ended process): a
node that runs batch jobs for months does not fill its disk with their logs.

When ``STATE_DIR/spool`` links to a tmpfs (the agent's runtime directory), the process writes
to ``spool/<name>.<stream>`` instead: creating a file there costs microseconds, where a busy
disk file system can take a millisecond, twice per launch, more than the spawn itself. The
agent copies ("spills") what a spool file holds to its disk log while the process runs (more
often while it writes, rarely while it is quiet) and all of it when the round ends, then
drops the spool file. Copied pages are freed by punching a hole, so a chatty service holds
little memory. A process that writes nothing never costs a disk file.

A spool file and its disk log share offsets: a new spool file starts at the size of the disk
log (sparse, costing nothing). So the disk log's size is always how far the spool has been
copied, and a spill interrupted by a crash resumes exactly there.

A disk log keeps only about its newest ``max_bytes`` (the engine's ``log_max_bytes``): past
that, its oldest whole blocks are punched out. Its size, and every offset, stay as they were
(the process appending to it, the spool and a reader following it notice nothing), and a
reader asking for dropped bytes is sent on to the first kept one. A chatty service thus
holds a bounded share of the disk however long it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import hashlib
import logging
import os
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, cast

from corral.wire.messages import LogChunk

log = logging.getLogger("corral.agent")

MAX_CHUNK: Final = 4 << 20
"""The most a single ReadLog answer carries, whatever the limit asked (frames stay small)."""

STREAMS: Final = ("stdout", "stderr")

#: how often a running process's spool is copied: soon after it writes, rarely when quiet
SPILL_EVERY: Final = 1.0
SPILL_QUIET_MAX: Final = 30.0

#: the newest bytes a disk log keeps, per stream, unless the engine says otherwise
DEFAULT_MAX_BYTES: Final = 100 << 20
#: seconds the log of a process that no longer runs here stays after its last write
DEFAULT_RETENTION: Final = 86_400
#: seconds between looks for logs past their retention (the first comes at start)
SWEEP_EVERY: Final = 600.0

_COPY_BLOCK: Final = 1 << 20
_PAGE: Final = os.sysconf("SC_PAGE_SIZE")
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
    if stream not in STREAMS:
        raise ValueError(f"unknown log stream {stream!r}")
    return state_dir / "logs" / f"{safe_name(upid)}.{stream}"


def open_for_append(path: str | Path, dir_fd: int | None = None) -> int:
    """A write-only, append-mode descriptor, created 0600, not inherited by accident."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
    return os.open(path, flags, 0o600, dir_fd=dir_fd)


@dataclass(slots=True)
class _Watch:
    """A spooled log name and when its spool is next copied."""

    rounds: int  # live rounds writing to it (a new round may start before the last settles)
    due: float
    every: float


class LogSpool:
    """Where the agent's processes write, and how their output reaches the disk."""

    def __init__(self, state_dir: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        """``max_bytes``: the newest bytes each disk log keeps (0: all of them)."""
        self._logs = state_dir / "logs"
        self._spool = state_dir / "spool"
        #: without a tmpfs behind ``spool``, processes write straight to their disk logs
        self.spooled = self._spool.is_symlink()
        # The per-launch files are named relative to their directory's descriptor: a path's
        # every component costs a lookup, and a launch makes about eight such calls.
        self._logs_fd = _open_dir(self._logs)
        self._spool_fd = _open_dir(self._spool) if self.spooled else self._logs_fd
        self._watched: dict[str, _Watch] = {}
        self._warned: set[str] = set()
        self._can_punch = _fallocate is not None
        self._max_bytes = max_bytes
        # Dropped only once this much more has come, so a busy log is not punched per spill.
        self._slack = max(max_bytes // 8, 1 << 16)
        self._can_drop = max_bytes > 0 and _fallocate is not None

    # --- the process side ---------------------------------------------------------------------

    def open(self, upid: str) -> tuple[int, int]:
        """Append-mode descriptors for a new round's stdout and stderr (caller closes them)."""
        name = safe_name(upid)
        fds: list[int] = []
        try:
            for stream in STREAMS:
                fds.append(self._open_stream(name, stream))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        watch = self._watched.get(name)
        if watch is None:
            self._watched[name] = _Watch(1, time.monotonic() + SPILL_EVERY, SPILL_EVERY)
        else:
            watch.rounds += 1
        return fds[0], fds[1]

    def close(self) -> None:
        """Let go of the directories (the spool stops being usable)."""
        for fd in {self._logs_fd, self._spool_fd}:
            os.close(fd)

    def _open_stream(self, name: str, stream: str) -> int:
        if not self.spooled:
            return open_for_append(f"{name}.{stream}", self._logs_fd)
        fd = open_for_append(f"{name}.{stream}", self._spool_fd)
        try:
            if os.fstat(fd).st_size == 0:
                copied = _size(f"{name}.{stream}", self._logs_fd)
                if copied:
                    os.ftruncate(fd, copied)  # a hole: new output lands after the disk log
        except BaseException:
            os.close(fd)
            raise
        return fd

    def settle(self, upid: str) -> None:
        """A round of ``upid`` ended: copy its output to disk, drop its spool when unused."""
        name = safe_name(upid)
        watch = self._watched.get(name)
        if watch is None:
            return
        watch.rounds = max(0, watch.rounds - 1)
        self._flush(name, watch)

    # --- the agent's side ---------------------------------------------------------------------

    def past_retention(self, retention: float, now: float) -> list[str]:
        """The disk logs last written before ``now - retention``, by file name. Reads the
        whole directory: call it off the event loop, then :meth:`drop` what it found."""
        cutoff = now - retention
        found = []
        with os.scandir(self._logs) as entries:
            for entry in entries:
                if entry.name.rpartition(".")[2] not in STREAMS:
                    continue
                with contextlib.suppress(OSError):  # gone meanwhile
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        found.append(entry.name)
        return found

    def drop(self, files: list[str], retention: float, now: float) -> int:
        """Remove those of ``files`` (from :meth:`past_retention`) that are still past their
        retention and whose process does not run here; return how many went. On the event
        loop, so that a round starting meanwhile keeps its log."""
        cutoff = now - retention
        dropped = 0
        for file in files:
            if file.rpartition(".")[0] in self._watched:
                continue  # a round writes to it (or its spool still holds output)
            with contextlib.suppress(OSError):
                if os.stat(file, dir_fd=self._logs_fd, follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(file, dir_fd=self._logs_fd)
                    dropped += 1
        return dropped

    def spill_due(self) -> None:
        """Copy the spools that are due; called about every :data:`SPILL_EVERY` seconds."""
        now = time.monotonic()
        for name, watch in list(self._watched.items()):
            if watch.due <= now:
                self._flush(name, watch, now)

    def adopt(self, upid: str) -> None:
        """Watch the logs of a process a previous agent started (before :meth:`recover`)."""
        name = safe_name(upid)
        watch = self._watched.setdefault(name, _Watch(0, 0.0, SPILL_EVERY))
        watch.rounds += 1

    def recover(self) -> None:
        """After an agent restart: settle the spool files no adopted process writes to."""
        if not self.spooled:
            return
        for name in {entry.rsplit(".", 1)[0] for entry in os.listdir(self._spool)}:
            watch = self._watched.setdefault(name, _Watch(0, 0.0, SPILL_EVERY))
            self._flush(name, watch)

    def _flush(self, name: str, watch: _Watch, now: float | None = None) -> None:
        """Spill ``name``; drop its spool once no round writes to it and all is on disk.
        Unspooled, the process writes to its disk logs itself: only their size is kept."""
        try:
            if self.spooled:
                copied = sum(self._spill(name, stream) for stream in STREAMS)
            else:
                copied = sum(self._keep_newest(f"{name}.{stream}") for stream in STREAMS)
        except OSError as exc:
            # Disk full, most likely: the output waits in the spool, in memory, for a retry.
            if name not in self._warned:
                log.warning("cannot copy the log of %s to disk: %s", name, exc)
                self._warned.add(name)
            watch.due = (now or time.monotonic()) + SPILL_EVERY
            return
        self._warned.discard(name)
        if watch.rounds == 0:
            if self.spooled:
                for stream in STREAMS:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f"{name}.{stream}", dir_fd=self._spool_fd)
            del self._watched[name]
            return
        watch.every = SPILL_EVERY if copied else min(watch.every * 2, SPILL_QUIET_MAX)
        watch.due = (now or time.monotonic()) + watch.every

    def _spill(self, name: str, stream: str) -> int:
        """Copy what the spool holds beyond the disk log; return the bytes copied."""
        file = f"{name}.{stream}"
        # Most rounds write nothing: an empty spool (no hole either, so an empty disk log)
        # is settled by this one stat, without opening either file.
        if _size(file, self._spool_fd) == 0:
            return 0
        try:
            src = os.open(file, os.O_RDWR | os.O_CLOEXEC, dir_fd=self._spool_fd)
        except FileNotFoundError:
            return 0
        try:
            end = os.fstat(src).st_size
            start = _size(file, self._logs_fd)
            if end <= start:
                return 0
            dst = os.open(
                file, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600, dir_fd=self._logs_fd
            )
            try:
                offset = start
                while offset < end:
                    block = os.pread(src, min(_COPY_BLOCK, end - offset), offset)
                    if not block:
                        break
                    offset += _write_all(dst, block, offset)
                self._drop_oldest(dst, offset)
            finally:
                os.close(dst)
            if self._can_punch:
                self._can_punch = _free_pages(src, offset - offset % _PAGE)
            return offset - start
        finally:
            os.close(src)

    def _keep_newest(self, file: str) -> int:
        """Drop what an unspooled disk log holds beyond its newest bytes; return the bytes
        dropped (while none are, it is looked at less and less often)."""
        size = _size(file, self._logs_fd)
        if not self._can_drop or size <= self._max_bytes + self._slack:
            return 0
        fd = os.open(file, os.O_WRONLY | os.O_CLOEXEC, dir_fd=self._logs_fd)
        try:
            return self._drop_oldest(fd, size)
        finally:
            os.close(fd)

    def _drop_oldest(self, fd: int, size: int) -> int:
        """Punch out the whole blocks of ``fd`` before its newest ``max_bytes``, once more
        than the slack has come since; return the bytes dropped."""
        if not self._can_drop or size <= self._max_bytes + self._slack:
            return 0
        first = _first_data(fd, 0, size)
        if size - first <= self._max_bytes + self._slack:
            return 0
        block = os.fstat(fd).st_blksize or _PAGE
        cut = (size - self._max_bytes) // block * block
        if cut <= first:
            return 0
        if _fallocate is not None and (
            _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, 0, cut) == 0
        ):
            return cut - first
        if ctypes.get_errno() in (errno.EOPNOTSUPP, errno.ENOSYS):
            log.warning(
                "the file system of %s cannot drop old log bytes: logs grow without bound",
                self._logs,
            )
            self._can_drop = False
            return 0
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))

    def read_chunk(
        self, request_id: int, upid: str, stream: str, offset: int, limit: int
    ) -> LogChunk:
        """Answer a ReadLog: at most ``min(limit, MAX_CHUNK)`` bytes from ``offset``.

        A missing log reads as empty (the process may not have written yet) with size 0; a
        bad request comes back with ``error`` set instead of raising. What is still in the
        spool is read from there, so a reader never waits for a spill. An ``offset`` whose
        bytes were dropped reads as empty, its ``next_offset`` the first byte kept.
        """
        if offset < 0 or limit < 0:
            return LogChunk(request_id, b"", offset, 0, "offset and limit must not be negative")
        try:
            path = log_path(self._logs.parent, upid, stream)
        except ValueError as exc:
            return LogChunk(request_id, b"", offset, 0, str(exc))
        want = min(limit, MAX_CHUNK)
        try:
            kept, data, size = _read_from(path, offset, want)
            if kept > offset:
                return LogChunk(request_id, b"", kept, size, None)
            if self.spooled and len(data) < want:
                spool = self._spool / path.name
                _, more, spooled = _read_from(spool, offset + len(data), want - len(data))
                data, size = data + more, max(size, spooled)
        except OSError as exc:
            return LogChunk(request_id, b"", offset, 0, f"cannot read log: {exc.strerror}")
        return LogChunk(request_id, data, offset + len(data), size, None)


def _read_from(path: Path, offset: int, limit: int) -> tuple[int, bytes, int]:
    """``(where the bytes kept from offset on begin, bytes from offset, file size)``; a
    missing file is empty. Bytes are read only when ``offset`` itself was kept."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return offset, b"", 0
    try:
        size = os.fstat(fd).st_size
        if offset >= size or not limit:
            return offset, b"", size
        kept = _first_data(fd, offset, size)
        return kept, (os.pread(fd, limit, offset) if kept == offset else b""), size
    finally:
        os.close(fd)


def _first_data(fd: int, offset: int, size: int) -> int:
    """The first offset from ``offset`` on that holds data: past the dropped blocks."""
    try:
        return os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # nothing but a hole up to the end
            return size
        if exc.errno == errno.EINVAL:  # no SEEK_DATA here: the file holds no dropped part
            return offset
        raise


def _size(path: str | Path, dir_fd: int | None = None) -> int:
    try:
        return os.stat(path, dir_fd=dir_fd).st_size
    except FileNotFoundError:
        return 0


def _open_dir(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _write_all(fd: int, data: bytes, offset: int) -> int:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written
    return len(data)


_FALLOC_FL_KEEP_SIZE: Final = 0x01
_FALLOC_FL_PUNCH_HOLE: Final = 0x02


def _load_fallocate() -> Callable[[int, int, int, int], int] | None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.fallocate64
        func.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        func.restype = ctypes.c_int
        return cast(Callable[[int, int, int, int], int], func)
    return None


_fallocate = _load_fallocate()


def _free_pages(fd: int, length: int) -> bool:
    """Give back the memory of ``[0, length)`` of a tmpfs file, keeping its size.

    False when the file system cannot: spooled output then stays in memory until its round
    ends and the spool file is dropped.
    """
    if length <= 0 or _fallocate is None:
        return _fallocate is not None
    if _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, 0, length) == 0:
        return True
    if ctypes.get_errno() in (errno.EOPNOTSUPP, errno.ENOSYS):
        log.warning("this file system cannot punch holes: spools are freed only at exit")
        return False
    return True


class LogSweeper:
    """Removes the logs past their retention: at start, then every :data:`SWEEP_EVERY`
    seconds. The directory is read off the event loop; the files go on it, a batch per loop
    turn, so that a large backlog never stalls the agent."""

    BATCH: Final = 500

    def __init__(self, spool: LogSpool, retention: float) -> None:
        """Runs on the current event loop; ``retention`` 0 removes nothing, ever."""
        self._spool = spool
        self._retention = retention
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.Handle | None = None
        if retention > 0:
            self._timer = self._loop.call_soon(self._look)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _look(self) -> None:
        now = time.time()
        found = self._loop.run_in_executor(None, self._spool.past_retention, self._retention, now)
        found.add_done_callback(lambda done: self._found(done, now))

    def _found(self, found: asyncio.Future[list[str]], now: float) -> None:
        if self._timer is None or found.cancelled():
            return  # stopped meanwhile
        error = found.exception()
        if error is not None:
            log.warning("cannot look for logs past their retention: %s", error)
        self._drop([] if error is not None else found.result(), now, 0)

    def _drop(self, files: list[str], now: float, dropped: int) -> None:
        dropped += self._spool.drop(files[: self.BATCH], self._retention, now)
        if len(files) > self.BATCH:
            self._timer = self._loop.call_soon(self._drop, files[self.BATCH :], now, dropped)
            return
        if dropped:
            log.info("removed %d log files unwritten for %gs", dropped, self._retention)
        self._timer = self._loop.call_later(SWEEP_EVERY, self._look)
