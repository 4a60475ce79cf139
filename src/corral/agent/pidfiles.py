"""The agent's records of its children, and the lock on its state directory.

``STATE_DIR/pids/journal`` holds a line for each child started (``+`` and a JSON object: its
pid, upid, round and process group), one for each child ended (``-``, its pid, and how it
ended: exit code, signal or why that is unknown, and when), and one for each ended round the
dispatcher has since recorded and told the agent to forget (``~`` and its upid and round).
Read in order, the lines give the live children and the ended rounds not yet forgotten: an
agent killed before its reports of them reached the dispatcher leaves what they said on disk,
for the agent that restarts there, or the driver that cleans up after it, to tell instead. A
process that ran is then never taken for one that did not, and run again.

A batch of launches, or of exits, costs one append: a file per child cost a create, a rename
and an unlink, the biggest share of the agent's own work per launch. Forget lines wait for
the next append (one lost in a crash only has a round reported again, which the dispatcher
forgets again). Once forgotten rounds make up most of the lines, the file is rewritten with
what is left (write and rename: a crash leaves the old file or the new one). A line cut
short by a crash is skipped.

A record also says what identifies that very process: its pidfs inode number (a pidfd's
``st_ino``, never shared by two processes of one boot; Linux 6.9 and later) or, on older
kernels, its start time (field 22 of ``/proc/<pid>/stat``). The identity is what makes the
record safe to act on later: a pid the kernel has since given to another process is never
killed by mistake, and an ``-`` line lost in a crash leaves a record that matches nothing.
The inode costs one ``fstat`` of a pidfd the agent holds anyway; reading ``/proc`` right
after a spawn waits for the child's exec to finish. Records outlive the agent on purpose: a
restarted agent adopts the processes they name, and ``kill_orphans`` (in ``launcher``) kills
them when the agent is gone for good. Records an older agent kept as one file per child
(``pids/<pid>``) are taken into the journal when it is opened; its ``-`` lines, which carry
no ending, drop their child as forgotten.

``STATE_DIR/agent.lock`` is held (``flock``) by the running agent, so two agents never share a
state directory and orphans are never "cleaned" under a live agent.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import select
import shutil
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any


class StateDirBusy(RuntimeError):
    """Another live agent holds this state directory."""


@dataclass(frozen=True, slots=True)
class PidRecord:
    """What the journal says about one live child."""

    upid: str
    round: int
    pgid: int
    start_time: int  # 0 when pidfd_ino identifies the process
    started_at: float
    pidfd_ino: int = 0

    def line(self, pid: int) -> bytes:
        """The journal's line for this record of ``pid``: ``+`` and a JSON object."""
        # by hand: json.dumps costs twice as much, once per process that starts
        return b'+{"pid": %d, "upid": %s, "round": %d, "pgid": %d, "start_time": %d, ' % (
            pid,
            encode_basestring_ascii(self.upid).encode(),
            self.round,
            self.pgid,
            self.start_time,
        ) + b'"started_at": %s, "pidfd_ino": %d}\n' % (
            _json_number(self.started_at),
            self.pidfd_ino,
        )

    @classmethod
    def from_doc(cls, raw: Any) -> PidRecord:
        """Raises ValueError, KeyError or TypeError for anything but a record."""
        return cls(
            upid=str(raw["upid"]),
            round=int(raw["round"]),
            pgid=int(raw["pgid"]),
            start_time=int(raw["start_time"]),
            started_at=float(raw["started_at"]),
            pidfd_ino=int(raw.get("pidfd_ino", 0)),
        )


def proc_identity(pid: int) -> tuple[str, int, int] | None:
    """``(state, process group, start time)`` of ``pid`` from ``/proc``; None if it is gone."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = data[data.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[2]), int(fields[19])  # fields 3, 5 and 22


@dataclass(frozen=True, slots=True)
class Ending:
    """How a child ended: its exit code or signal, else why that is unknown; and when."""

    exit_code: int | None
    signal: int | None
    error: str | None
    ended_at: float | None

    def as_json(self) -> bytes:
        # by hand: json.dumps costs three times as much, once per process that ends
        error = b"null" if self.error is None else encode_basestring_ascii(self.error).encode()
        numbers = (_json_number(self.exit_code), _json_number(self.signal))
        return b"[%s, %s, %s, %s]" % (*numbers, error, _json_number(self.ended_at))

    @classmethod
    def from_doc(cls, raw: Any) -> Ending:
        """Raises ValueError or TypeError for anything but an ending."""
        exit_code, signum, error, ended_at = raw
        return cls(
            None if exit_code is None else int(exit_code),
            None if signum is None else int(signum),
            None if error is None else str(error),
            None if ended_at is None else float(ended_at),
        )


def _json_number(value: float | None) -> bytes:
    return b"null" if value is None else repr(value).encode()


@dataclass(frozen=True, slots=True)
class Finished:
    """An ended child whose round the dispatcher has not yet told the agent to forget."""

    pid: int
    record: PidRecord
    ending: Ending


Key = tuple[str, int]
"""A process round: ``(upid, round)``."""

JOURNAL = "journal"
#: lines the journal may hold beyond those still meant before it is rewritten
COMPACT_AFTER = 4096


class PidJournal:
    """The records of ``pids_dir``: replayed when opened, then appended to (see the module).

    Only the holder of the state directory's lock may open it.
    """

    def __init__(self, pids_dir: Path) -> None:
        self._dir = pids_dir
        self._path = pids_dir / JOURNAL
        self._lines: dict[int, bytes] = {}  # the live records' lines, as in the file
        self._records: dict[int, PidRecord] = {}
        # ended rounds not yet forgotten, with their two lines as in the file
        self._finished: dict[Key, tuple[Finished, bytes]] = {}
        self._stale = 0  # lines in the file that no longer mean anything
        self._pending: list[bytes] = []  # end and forget lines not written yet
        self._replay()
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if self._stale:
            # at once, so that nothing is appended to a line a crash cut short
            self._rewrite()
        self._take_in_single_files()

    def records(self) -> dict[int, PidRecord]:
        """The live children's records, by pid, as of the last write."""
        return dict(self._records)

    def finished(self) -> list[Finished]:
        """The ended rounds not yet forgotten, as of the last write."""
        return [entry for entry, _ in self._finished.values()]

    def started(self, records: Iterable[tuple[int, PidRecord]]) -> None:
        """Record children that started, with the lines not yet written: one append."""
        lines = []
        for pid, record in records:
            line = record.line(pid)
            if pid in self._lines:
                self._stale += 1  # the pid was reused: its end line was lost in a crash
            self._lines[pid] = line
            self._records[pid] = record
            lines.append(line)
        self._append(lines)

    def ended(self, pid: int, ending: Ending) -> None:
        """``pid`` ended so; its line is written with the next :meth:`flush` or start."""
        line = self._lines.pop(pid, None)
        if line is None:
            return
        record = self._records.pop(pid)
        end = b"-%d %s\n" % (pid, ending.as_json())
        self._keep_finished(Finished(pid, record, ending), line + end)
        self._pending.append(end)

    def forgotten(self, key: Key) -> None:
        """The dispatcher recorded how round ``key`` ended: drop it. Its line waits for the
        next write of anything else."""
        if self._finished.pop(key, None) is not None:
            self._pending.append(
                b"~[%s, %d]\n" % (encode_basestring_ascii(key[0]).encode(), key[1])
            )
            self._stale += 3

    def flush(self) -> None:
        """Write the lines noted since the last write."""
        if self._pending:
            self._append([])

    def clear(self) -> None:
        """Forget every record and remove the journal (``kill_orphans``, once all is killed)."""
        self._lines.clear()
        self._records.clear()
        self._finished.clear()
        self._pending.clear()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.flush()
        os.close(self._fd)

    def _keep_finished(self, entry: Finished, lines: bytes) -> None:
        key = (entry.record.upid, entry.record.round)
        if key in self._finished:
            self._stale += 2  # the round ran twice here: only its last run counts
        self._finished[key] = (entry, lines)

    def _append(self, lines: list[bytes]) -> None:
        pending, self._pending = self._pending, []
        data = b"".join([*pending, *lines])
        if not data:
            return
        # One write: tmpfs writes it whole. The file of an agent killed midway ends with at
        # most a cut line, which the replay skips.
        _write_all(self._fd, data)
        if self._stale > max(COMPACT_AFTER, len(self._lines) + 2 * len(self._finished)):
            self._rewrite()

    def _rewrite(self) -> None:
        tmp = self._dir / f"{JOURNAL}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            # Ended rounds first: a pid that ran one of them may run again, and its live line
            # must come after the end that frees the pid.
            kept = [*(lines for _, lines in self._finished.values()), *self._lines.values()]
            _write_all(fd, b"".join(kept))
        finally:
            os.close(fd)
        os.rename(tmp, self._path)
        os.close(self._fd)
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._stale = 0

    def _replay(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._dir / f"{JOURNAL}.tmp")  # left by a crash during a rewrite
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            return
        for line in data.splitlines(keepends=True):
            self._stale += 1
            if not line.endswith(b"\n"):
                continue  # cut short by a crash while it was written
            try:
                self._replay_line(line)
            except (ValueError, KeyError, TypeError):
                continue  # unreadable: nothing can be done with it
        self._stale -= len(self._lines) + 2 * len(self._finished)

    def _replay_line(self, line: bytes) -> None:
        kind, body = line[:1], line[1:]
        if kind == b"+":
            raw = json.loads(body)
            pid = int(raw["pid"])
            self._records[pid] = PidRecord.from_doc(raw)
            self._lines[pid] = line
        elif kind == b"-":
            pid_text, _, ending_text = body.partition(b" ")
            pid = int(pid_text)
            ending = Ending.from_doc(json.loads(ending_text)) if ending_text.strip() else None
            record = self._records.pop(pid, None)
            start = self._lines.pop(pid, b"")
            if record is not None and ending is not None:
                self._keep_finished(Finished(pid, record, ending), start + line)
        elif kind == b"~":
            upid, round_ = json.loads(body)
            self._finished.pop((str(upid), int(round_)), None)

    def _take_in_single_files(self) -> None:
        """Records an older agent kept as ``pids/<pid>``: into the journal, then removed."""
        found = []
        for name in os.listdir(self._dir):
            path = self._dir / name
            if name.endswith(".tmp") and name != f"{JOURNAL}.tmp":
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # left by an agent killed while writing it
            if not name.isdigit():
                continue
            # an unreadable one: nothing can be done with it
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                found.append((int(name), PidRecord.from_doc(json.loads(path.read_bytes()))))
        if found:
            self.started(found)
        for name in os.listdir(self._dir):
            if name.isdigit():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._dir / name)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@functools.cache
def has_pidfs() -> bool:
    """Do pidfds of different processes have different inode numbers (pidfs)?"""
    if os.getpid() == 1:
        return False
    fds = []
    try:
        fds = [os.pidfd_open(os.getpid()), os.pidfd_open(1)]
        return os.fstat(fds[0]).st_ino != os.fstat(fds[1]).st_ino
    except OSError:
        return False
    finally:
        for fd in fds:
            os.close(fd)


def pidfd_identity(pidfd: int) -> int:
    """The pidfs inode number of the process behind ``pidfd``; 0 without pidfs."""
    return os.fstat(pidfd).st_ino if has_pidfs() else 0


def same_process(pid: int, record: PidRecord) -> bool:
    """True if ``pid`` is still the process the record describes, even as a zombie.

    An unreaped zombie leader still pins its group id, so its group is still safe to signal.
    """
    if record.pidfd_ino:
        pidfd = open_pidfd_if_same(pid, record, running=False)
        if pidfd is not None:
            os.close(pidfd)
        return pidfd is not None
    identity = proc_identity(pid)
    return identity is not None and identity[1:] == (record.pgid, record.start_time)


def still_running(pid: int, record: PidRecord) -> bool:
    """True if ``pid`` is still the process the record describes, and has not exited."""
    if record.pidfd_ino:
        pidfd = open_pidfd_if_same(pid, record)
        if pidfd is not None:
            os.close(pidfd)
        return pidfd is not None
    identity = proc_identity(pid)
    return (
        identity is not None
        and identity[0] not in ("Z", "X")
        and identity[1:] == (record.pgid, record.start_time)
    )


def open_pidfd_if_same(pid: int, record: PidRecord, *, running: bool = True) -> int | None:
    """A pidfd for the process the record describes, or None if it is gone (or, with
    ``running``, has exited)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    # Check identity after opening: the pidfd then pins this very process, whatever comes next.
    if record.pidfd_ino:
        same = os.fstat(pidfd).st_ino == record.pidfd_ino
        alive = same and not (running and has_exited(pidfd))
    else:
        alive = still_running(pid, record) if running else same_process(pid, record)
    if not alive:
        os.close(pidfd)
        return None
    return pidfd


def has_exited(pidfd: int) -> bool:
    """True once the process behind ``pidfd`` has exited (a pidfd turns readable then)."""
    readable, _, _ = select.select([pidfd], [], [], 0)
    return bool(readable)


#: sub-directories whose files only mean something while this boot lasts
RUNTIME_SUBDIRS = ("pids", "config", "spool")
#: the link to the configuration files of processes that run as another user (``identity``)
CONFIG_LINK = "config-as"


def prepare_state_dir(state_dir: Path, runtime_dir: Path | None = None) -> None:
    """Create the state directory's layout.

    With ``runtime_dir`` (a tmpfs such as /dev/shm or $XDG_RUNTIME_DIR), the per-process
    files that mean nothing after a reboot — pid records, configuration files and the log
    spool — live there, linked from the state directory: creating a file on tmpfs costs
    microseconds, on a loaded disk file system up to a millisecond, and the agent makes
    several per launch.
    """
    (state_dir / "logs").mkdir(mode=0o700, parents=True, exist_ok=True)
    for sub in RUNTIME_SUBDIRS:
        link = state_dir / sub
        if runtime_dir is None or link.is_dir():
            link.mkdir(mode=0o700, parents=True, exist_ok=True)
            continue
        target = runtime_dir / sub
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        if link.is_symlink():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)


def private_runtime_root(base: Path) -> Path | None:
    """``base/corral-<uid>``, made private to this user; None if that cannot be ensured.

    ``base`` is shared (/dev/shm is world-writable), so a directory someone else made, or a
    link planted there, is refused rather than used.
    """
    root = base / f"corral-{os.getuid()}"
    try:
        root.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(root)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None
    return root


def remove_runtime_dirs(state_dir: Path) -> None:
    """Remove what the state directory's runtime links point to (the links go with it)."""
    for sub in (*RUNTIME_SUBDIRS, CONFIG_LINK):
        link = state_dir / sub
        if link.is_symlink():
            shutil.rmtree(link.resolve(), ignore_errors=True)
            with contextlib.suppress(OSError):
                link.resolve().parent.rmdir()


def lock_state_dir(state_dir: Path, wait: float = 0.0) -> int:
    """Take the state directory's lock and return its descriptor (keep it open to hold it).

    Raises StateDirBusy if another holds it for ``wait`` seconds more: an agent holds it as
    long as it lives, one who reads or cleans up after a dead agent for milliseconds. The
    descriptor is close-on-exec, so the children never inherit the lock and it dies with
    the agent.
    """
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(state_dir / "agent.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise StateDirBusy(f"an agent is running on {state_dir}") from None
        time.sleep(0.01)
