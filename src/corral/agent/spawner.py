"""The spawn helper: a small process that starts, watches, signals and reaps the agent's
processes, so that the agent's own loop never waits for a spawn.

``posix_spawn`` returns only once the child has exec'd (a vfork). Under load that wait is
most of a launch, and Python keeps its lock through it, so neither the agent's loop nor a
thread of it could do anything meanwhile. This helper takes the wait. The launcher starts
it (``python -m corral.agent.spawner FD STATE_DIR``) with one end of a socket pair, in a
process group of its own, and it lives as long as the agent: when the agent's end closes,
or the agent is gone, it leaves at once and kills nothing. Its processes then run on,
their records in ``STATE_DIR/pids`` (written here, before a start is reported), for the
next agent to adopt.

Both ways, messages are msgpack arrays on the stream. The first from the agent is
``[CONFIG, base_env, run_as]``, ``run_as`` being ``[name, uid, gid, groups]`` or None. Then:

- ``[SPAWN, token, upid, round, program, argv, env, cwd]``: open the round's logs, spawn
  ``program`` in a new session with the base environment updated by ``env``, record it,
  and answer ``[STARTED, token, pid, started_at]`` or ``[FAILED, token, reason]``;
- ``[SIGNAL, pid, signum]``: signal the group of that child if it is not reaped yet (an
  unreaped leader pins its group id, so the group cannot be a stranger's).

When a child exits, the rest of its group is SIGKILLed (stragglers) while the unreaped
leader still pins the group id, then the leader is reaped, its record removed, and
``[EXITED, pid, exit_code, signal]`` sent. Every start is answered before its exit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]  # msgpack ships no type information

from corral.agent import pidfiles
from corral.agent.logs import open_round_streams, safe_name, stream_dirs

CONFIG, SPAWN, SIGNAL = 0, 1, 2
STARTED, FAILED, EXITED = 0, 1, 2

#: spawns per turn before the answers go out, so that none waits behind a long batch
_SPAWNS_PER_TURN = 8
_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


@dataclass(frozen=True, slots=True)
class _RunAs:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


@dataclass(slots=True)
class _Child:
    pid: int
    pidfd: int
    upid: str
    round: int
    started_at: float


class Spawner:
    """The helper's state: its children, what the agent asked, what it owes the agent."""

    def __init__(self, sock: socket.socket, state_dir: Path) -> None:
        self._sock = sock
        self._agent = os.getppid()
        self._pids_dir = state_dir / "pids"
        self._logs_dir, self._spool_dir = stream_dirs(state_dir)
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._epoll = select.epoll()
        self._epoll.register(sock.fileno(), select.EPOLLIN)
        self._unpacker = msgpack.Unpacker(raw=False, use_list=True, strict_map_key=False)
        self._requests: deque[list[Any]] = deque()
        self._children: dict[int, _Child] = {}  # by pidfd
        self._by_pid: dict[int, _Child] = {}
        self._unrecorded: list[_Child] = []
        self._answers: list[bytes] = []
        self._base_env: dict[str, str] = {}
        self._run_as: _RunAs | None = None
        self._cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def serve(self) -> None:
        """Until the agent's end closes or the agent is gone."""
        while True:
            timeout = 0 if self._requests else -1
            for fd, _ in self._epoll.poll(timeout):
                if fd == self._sock.fileno():
                    if not self._read():
                        return
                else:
                    self._on_exit(fd)
            self._obey()
            self._record()
            if self._answers:
                try:
                    self._sock.sendall(b"".join(self._answers))
                except OSError:
                    return  # the agent is gone
                self._answers.clear()

    def _read(self) -> bool:
        try:
            data = self._sock.recv(1 << 16)
        except InterruptedError:
            return True
        except OSError:
            return False
        if not data:
            return False
        self._unpacker.feed(data)
        self._requests.extend(self._unpacker)
        return True

    def _obey(self) -> None:
        spawns = 0
        while self._requests and spawns < _SPAWNS_PER_TURN:
            request = self._requests.popleft()
            kind = request[0]
            if kind == SPAWN:
                if os.getppid() != self._agent:
                    # the agent died with launches in flight: nobody would watch them
                    sys.exit(0)
                self._spawn(*request[1:])
                spawns += 1
            elif kind == SIGNAL:
                self._signal(request[1], request[2])
            elif kind == CONFIG:
                self._configure(request[1], request[2])

    def _configure(self, base_env: dict[str, str], run_as: list[Any] | None) -> None:
        self._base_env = base_env
        if run_as is not None:
            name, uid, gid, groups = run_as
            self._run_as = _RunAs(name, uid, gid, tuple(groups))

    def _spawn(
        self,
        token: int,
        upid: str,
        round_: int,
        program: str,
        argv: list[str],
        env: dict[str, str],
        cwd: str | None,
    ) -> None:
        started_at = time.time()
        out = err = -1
        try:
            out, err = open_round_streams(self._logs_dir, self._spool_dir, safe_name(upid))
            pid = self._start(program, argv, {**self._base_env, **env}, cwd, out, err)
        except (OSError, ValueError) as exc:
            self._answer(FAILED, token, describe_spawn_error(exc))
            return
        finally:
            for fd in (out, err):
                if fd >= 0:
                    os.close(fd)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            # Out of descriptors, most likely: a process we cannot watch must not run at all.
            _killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            self._answer(FAILED, token, describe_spawn_error(exc))
            return
        child = _Child(pid, pidfd, upid, round_, started_at)
        self._children[pidfd] = child
        self._by_pid[pid] = child
        self._epoll.register(pidfd, select.EPOLLIN)
        self._unrecorded.append(child)
        self._answer(STARTED, token, pid, started_at)

    def _start(
        self,
        program: str,
        argv: list[str],
        env: dict[str, str],
        cwd: str | None,
        out: int,
        err: int,
    ) -> int:
        if self._run_as is not None:
            return _spawn_as(self._run_as, program, argv, env, cwd, self._devnull, out, err)
        # posix_spawn has no working directory of its own: step into it for the call
        # (this process is single-threaded and uses no relative paths) and back out.
        if cwd is not None:
            os.chdir(cwd)
        try:
            return os.posix_spawn(
                program,
                argv,
                env,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, self._devnull, 0),
                    (os.POSIX_SPAWN_DUP2, out, 1),
                    (os.POSIX_SPAWN_DUP2, err, 2),
                ],
                setsid=True,
                # What Python ignores for itself, a child gets back at the default.
                setsigdef=_RESET_SIGNALS,
                setsigmask=(),
            )
        finally:
            if cwd is not None:
                os.fchdir(self._cwd)

    def _record(self) -> None:
        """Write the records of this turn's starts, before their answers go out."""
        for child in self._unrecorded:
            record = pidfiles.PidRecord(
                child.upid,
                child.round,
                child.pid,
                0 if pidfiles.has_pidfs() else _start_time(child.pid),
                child.started_at,
                pidfiles.pidfd_identity(child.pidfd),
            )
            try:
                pidfiles.write_record(self._pids_dir, child.pid, record)
            except OSError as exc:
                # The process runs on; only an orphan clean-up after an agent crash misses it.
                print(f"cannot record pid {child.pid} of {child.upid}: {exc}", file=sys.stderr)
        self._unrecorded.clear()

    def _signal(self, pid: int, signum: int) -> None:
        if pid in self._by_pid:
            _killpg(pid, signum)

    def _on_exit(self, pidfd: int) -> None:
        child = self._children.get(pidfd)
        if child is None:
            return
        try:
            exited = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            exited = None
        if exited is None:
            return  # a readable pidfd means exit; this check only keeps a live group unkilled
        # Stragglers first: the unreaped leader still holds the group id.
        _killpg(child.pid, signal.SIGKILL)
        _, status = os.waitpid(child.pid, 0)
        del self._children[pidfd]
        del self._by_pid[child.pid]
        os.close(pidfd)  # which takes it out of the epoll set
        if child in self._unrecorded:
            self._unrecorded.remove(child)
        pidfiles.remove_record(self._pids_dir, child.pid)
        code = os.waitstatus_to_exitcode(status)
        if code >= 0:
            self._answer(EXITED, child.pid, code, None)
        else:
            self._answer(EXITED, child.pid, None, -code)

    def _answer(self, *message: Any) -> None:
        self._answers.append(msgpack.packb(message))


def _spawn_as(
    user: _RunAs,
    program: str,
    argv: list[str],
    env: dict[str, str],
    cwd: str | None,
    stdin: int,
    out: int,
    err: int,
) -> int:
    """Start the process as ``user``: ``posix_spawn`` cannot switch users, so this is a fork
    whose child switches before it execs (slower, but only such processes pay it)."""
    import subprocess

    try:
        child = subprocess.Popen(
            argv,
            executable=program,
            env=env,
            stdin=stdin,
            stdout=out,
            stderr=err,
            cwd=cwd,
            start_new_session=True,
            user=user.uid,
            group=user.gid,
            extra_groups=list(user.groups),
        )
    except subprocess.SubprocessError as exc:
        raise PermissionError(errno.EPERM, f"cannot run as {user.name}: {exc}") from None
    # Watched and reaped through its pidfd, like the others: the Popen object must neither
    # reap it later nor warn that it still runs.
    child.returncode = 0
    return child.pid


def describe_spawn_error(exc: BaseException) -> str:
    """A one-line reason such as ``No such file or directory: /x``."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return f"{type(exc).__name__}: {exc}"


def _start_time(pid: int) -> int:
    identity = pidfiles.proc_identity(pid)
    return identity[2] if identity else 0


def _killpg(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def main(argv: list[str]) -> int:
    fd, state_dir = int(argv[0]), Path(argv[1])
    # Its children are reaped here, one by one: none may be reaped behind its back.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    sock = socket.socket(fileno=fd)
    # Passed down inheritable: its processes must not hold the link open after it is gone.
    sock.set_inheritable(False)
    sock.setblocking(True)
    Spawner(sock, state_dir).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
