"""Spawning, watching and killing the agent's processes, each in its own process group.

A process is started with ``os.posix_spawn`` (a vfork and an exec, with none of
``subprocess``'s per-call Python work) as the leader of a process group of its own (as
supervisord does; a new session cost a tenth more per spawn here, all of it while the
agent waits for the exec), with stdin on /dev/null and stdout/stderr appended to its logs (see
``logs.LogSpool``). Its exit is watched with a pidfd in the launcher's own epoll set, whose
one descriptor the event loop watches: no thread per child, no polling, and a registration
costs one syscall (closing the pidfd removes it). When the leader exits, the rest of its
group is SIGKILLed (stragglers) while the unreaped leader still pins the group id, then the
leader is reaped with ``waitpid`` and the exit code or signal reported.

Processes outlive the agent: the records in ``STATE_DIR/pids`` let a restarted agent adopt
them (their exit status is then unknowable, since they are no longer its children) and let
``kill_orphans`` clean up after an agent that is gone for good. Ended rounds stay there, with
how they ended, until the dispatcher says to forget them (``forget``): a restarted agent
reports them again, and ``last_reports`` tells a driver what a dead agent would have said.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import select
import shutil
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from corral.agent import pidfiles
from corral.agent.identity import Identity
from corral.agent.logs import (
    DEFAULT_MAX_BYTES,
    DEFAULT_RETENTION,
    SPILL_EVERY,
    LogSpool,
    LogSweeper,
    safe_name,
)
from corral.wire.codec import encode_frame
from corral.wire.messages import EXITED, RUNNING, SPAWN_FAILED, Launch, ProcessReport

log = logging.getLogger("corral.agent")

Key = pidfiles.Key

_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)

#: seconds to wait for the lock of a dead agent's directory, which another reader of its
#: journal (the dispatcher asking what it ran, a clean-up) may hold for a moment
_DEAD_AGENT_LOCK_WAIT = 2.0

UNKNOWN_STATUS = "exit status unknown: the process was adopted after an agent restart"
ENDED_UNWATCHED = "exit status unknown: the process ended while no agent was watching it"


@dataclass(slots=True)
class _Child:
    """A live process round the launcher watches."""

    report: ProcessReport
    pid: int
    pidfd: int
    ours: bool  # False when adopted: not our child, so it cannot be reaped
    identity: int  # its pidfs inode number, or 0 where the kernel has no pidfs
    config_path: Path
    kill_timer: asyncio.TimerHandle | None = None
    kill_at: float | None = None


class Launcher:
    """Runs process rounds and calls ``on_exit`` with the final report of each."""

    def __init__(
        self,
        state_dir: Path,
        on_exit: Callable[[ProcessReport], None],
        environ: Mapping[str, str],
        identity: Identity | None = None,
        log_max_bytes: int = DEFAULT_MAX_BYTES,
        log_retention: float = DEFAULT_RETENTION,
    ) -> None:
        """``identity`` starts the processes as another user (or refuses to start them);
        None runs them as the agent's own user (see ``identity``). Each log keeps its newest
        ``log_max_bytes`` (0: all); the logs of a process that no longer runs here go once
        unwritten for ``log_retention`` seconds (0: never)."""
        self._state_dir = state_dir
        self._pids_dir = state_dir / "pids"
        self._identity = identity
        self._owner = identity.owner if identity is not None else None
        self._config_dir = (
            identity.config_dir(state_dir) if identity is not None else state_dir / "config"
        )
        # Most processes have no configuration: they share one file, and one /dev/null,
        # instead of costing a file creation and an open each (syscalls are dear here).
        self._empty_config = self._config_dir / "empty.json"
        # shared by the processes of another user too: theirs to read, not to change
        _write_private(self._empty_config, "{}", mode=0o600 if self._owner is None else 0o644)
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._on_exit = on_exit
        self._environ = dict(environ)
        self._loop = asyncio.get_running_loop()
        self._live: dict[Key, _Child] = {}
        self._exits = select.epoll()
        self._pidfds: dict[int, Key] = {}
        self._loop.add_reader(self._exits.fileno(), self._on_exits)
        # Records are written after a batch of spawns (see record_pending), ends once a turn.
        self._journal = pidfiles.PidJournal(self._pids_dir)
        self._unrecorded: dict[int, _Child] = {}
        self._ends_due = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.logs = LogSpool(state_dir, log_max_bytes)
        self._spill_timer = self._loop.call_later(SPILL_EVERY, self._spill)
        self._sweeper = LogSweeper(self.logs, log_retention)

    @property
    def running(self) -> int:
        return len(self._live)

    def is_live(self, key: Key) -> bool:
        return key in self._live

    # --- spawning -----------------------------------------------------------------------------

    def spawn(self, launch: Launch) -> ProcessReport:
        """Start a round; the report says ``running`` or, never raising, ``spawn_failed``."""
        started_at = time.time()
        try:
            return self._start(launch, started_at)
        except (OSError, ValueError) as exc:
            return ProcessReport(
                launch.upid,
                launch.round,
                SPAWN_FAILED,
                None,
                None,
                None,
                describe_spawn_error(exc),
                started_at,
                time.time(),
            )

    def _drop_config(self, path: Path) -> None:
        if path != self._empty_config:
            path.unlink(missing_ok=True)

    def _config_path(self, upid: str, round_: int) -> Path:
        return self._config_dir / f"{safe_name(upid)}.{round_}.json"

    def _start(self, launch: Launch, started_at: float) -> ProcessReport:
        if launch.configuration == "{}":
            config_path = self._empty_config
        else:
            config_path = self._config_path(launch.upid, launch.round)
            _write_private(config_path, launch.configuration, owner=self._owner)
        env = {
            **self._environ,
            **launch.env,
            "CORRAL_UPID": launch.upid,
            "CORRAL_ROUND": str(launch.round),
            "CORRAL_CONFIGURATION": launch.configuration,
            "CORRAL_CONFIGURATION_FILE": str(config_path),
        }
        out = err = -1
        try:
            out, err = self.logs.open(launch.upid)
            pid = self._spawn(launch, find_program(launch.exec, env), env, out, err)
        except BaseException:
            self._drop_config(config_path)
            if out >= 0:
                self.logs.settle(launch.upid)
            raise
        finally:
            for fd in (out, err):
                if fd >= 0:
                    os.close(fd)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            # Out of descriptors, most likely: a process we cannot watch must not run at all.
            _killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            self._drop_config(config_path)
            self.logs.settle(launch.upid)
            raise
        report = ProcessReport(
            launch.upid, launch.round, RUNNING, pid, None, None, None, started_at, None
        )
        child = _Child(report, pid, pidfd, True, pidfiles.pidfd_identity(pidfd), config_path)
        self._watch(child)
        if not self._unrecorded:  # a safety net for callers that never call record_pending
            self._loop.call_soon(self.record_pending)
        self._unrecorded[pid] = child
        return report

    def _spawn(self, launch: Launch, program: str, env: dict[str, str], out: int, err: int) -> int:
        """Start the process and return its pid; raise OSError or ValueError if it cannot.

        ``posix_spawn`` has no working directory of its own: the agent steps into it for the
        call (it is single-threaded there, and uses no relative paths) and back out.
        """
        if self._identity is not None:
            return self._identity.spawn(launch, program, env, self._devnull, out, err)
        cwd = launch.working_directory
        if cwd is not None:
            os.chdir(cwd)
        try:
            return os.posix_spawn(
                program,
                [launch.exec, *launch.argv],
                env,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, self._devnull, 0),
                    (os.POSIX_SPAWN_DUP2, out, 1),
                    (os.POSIX_SPAWN_DUP2, err, 2),
                ],
                setpgroup=0,
                # What Python ignores for itself, a child gets back at the default.
                setsigdef=_RESET_SIGNALS,
                setsigmask=(),
            )
        finally:
            if cwd is not None:
                os.fchdir(self._cwd)

    def record_pending(self) -> None:
        """Write the pid records of the rounds spawned since the last call.

        Reading ``/proc/<pid>/stat`` right after a spawn would wait for the child to finish
        its exec; after a batch of spawns it no longer has to, so records are written per
        batch (one append to the journal). Call this before the batch's reports can leave,
        so that a process reported running always has its record.
        """
        pending, self._unrecorded = self._unrecorded, {}
        records = []
        for pid, child in pending.items():
            start_time = 0
            if not child.identity:
                # Unreaped (reaping drops it from _unrecorded): /proc/<pid> is still this child.
                identity = pidfiles.proc_identity(pid)
                start_time = identity[2] if identity else 0
            report = child.report
            records.append(
                (
                    pid,
                    pidfiles.PidRecord(
                        report.upid,
                        report.round,
                        pid,
                        start_time,
                        report.started_at or 0.0,
                        child.identity,
                    ),
                )
            )
        try:
            self._journal.started(records)
        except OSError as exc:
            # The processes run on; only an orphan clean-up after an agent crash misses them.
            log.warning("cannot record the pids of %d processes: %s", len(records), exc)

    def forget(self, key: Key) -> None:
        """The dispatcher recorded how round ``key`` ended: its record may go."""
        self._journal.forgotten(key)

    def _note_end(self, pid: int, ending: pidfiles.Ending) -> None:
        """``pid`` ended so; the journal learns it at the end of this loop turn."""
        self._journal.ended(pid, ending)
        if not self._ends_due:
            self._ends_due = True
            self._loop.call_soon(self._write_ends)

    def _write_ends(self) -> None:
        self._ends_due = False
        try:
            self._journal.flush()
        except OSError as exc:
            # A record left behind matches no process once its pid is reused: harmless.
            log.warning("cannot record the end of processes: %s", exc)

    def _watch(self, child: _Child) -> None:
        key = (child.report.upid, child.report.round)
        self._live[key] = child
        self._idle.clear()
        self._pidfds[child.pidfd] = key
        self._exits.register(child.pidfd, select.EPOLLIN)

    def _unwatch(self, child: _Child) -> None:
        del self._pidfds[child.pidfd]
        os.close(child.pidfd)  # which takes it out of the epoll set
        if child.kill_timer is not None:
            child.kill_timer.cancel()

    def _spill(self) -> None:
        self.logs.spill_due()
        self._spill_timer = self._loop.call_later(SPILL_EVERY, self._spill)

    # --- adoption after an agent restart ------------------------------------------------------

    def adopt(self) -> list[ProcessReport]:
        """Take over the processes a previous agent left running; report the ones that ended.

        Reports come back for every record found: ``running`` for a process still alive
        (watched from now on), ``exited`` with an unknown status for one that is gone, and
        ``exited`` as it ended for a round the dispatcher had not forgotten (its report may
        not have reached it).
        """
        reports = [_ended_report(entry) for entry in self._journal.finished()]
        for pid, record in self._journal.records().items():
            pidfd = pidfiles.open_pidfd_if_same(pid, record)
            if pidfd is None:
                reports.append(self._ended_unwatched(pid, record))
                continue
            report = _running_report(pid, record)
            key = (record.upid, record.round)
            config_path = self._config_path(*key)
            self._watch(_Child(report, pid, pidfd, False, record.pidfd_ino, config_path))
            self.logs.adopt(record.upid)
            reports.append(report)
        self.logs.recover()
        return reports

    def _ended_unwatched(self, pid: int, record: pidfiles.PidRecord) -> ProcessReport:
        ending = pidfiles.Ending(None, None, ENDED_UNWATCHED, None)
        self._note_end(pid, ending)
        with contextlib.suppress(ValueError):
            self._config_path(record.upid, record.round).unlink(missing_ok=True)
        return _ended_report(pidfiles.Finished(pid, record, ending))

    # --- exits --------------------------------------------------------------------------------

    def _on_exits(self) -> None:
        for pidfd, _ in self._exits.poll(0):
            key = self._pidfds.get(pidfd)
            if key is not None:
                self._on_ready(key)

    def _on_ready(self, key: Key) -> None:
        child = self._live.get(key)
        if child is None:
            return
        exited = _peek_exit(child.pidfd) if child.ours else False
        if exited is None:
            return  # a readable pidfd means exit; this check only keeps a live group unkilled
        del self._live[key]
        self._unrecorded.pop(child.pid, None)
        self._unwatch(child)
        exit_code: int | None = None
        signum: int | None = None
        error: str | None = UNKNOWN_STATUS
        if exited:
            # Stragglers first: the unreaped leader still holds the group id, so it cannot
            # have been reused by an unrelated group.
            _killpg(child.pid, signal.SIGKILL)
        if child.ours:
            exit_code, signum, error = _reap(child.pid)
        # A leader someone else reaped (an adopted one) may have had its group id reused:
        # leave that group alone rather than risk killing a stranger.
        ended_at = time.time()
        self._note_end(child.pid, pidfiles.Ending(exit_code, signum, error, ended_at))
        self._drop_config(child.config_path)
        self.logs.settle(child.report.upid)
        report = replace(
            child.report,
            status=EXITED,
            exit_code=exit_code,
            signal=signum,
            error=error,
            ended_at=ended_at,
        )
        if not self._live:
            self._idle.set()
        self._on_exit(report)

    # --- killing ------------------------------------------------------------------------------

    def kill(self, key: Key, grace: float) -> bool:
        """SIGTERM the round's process group; SIGKILL it after ``grace`` seconds if alive.

        Returns False when the round is not running. A repeated kill only ever brings the
        SIGKILL closer.
        """
        child = self._live.get(key)
        if child is None:
            return False
        self._signal_group(child, signal.SIGTERM)
        kill_at = self._loop.time() + max(grace, 0.0)
        if child.kill_at is None or kill_at < child.kill_at:
            if child.kill_timer is not None:
                child.kill_timer.cancel()
            child.kill_at = kill_at
            child.kill_timer = self._loop.call_at(kill_at, self._escalate, key)
        return True

    def _escalate(self, key: Key) -> None:
        child = self._live.get(key)
        if child is not None:
            self._signal_group(child, signal.SIGKILL)

    def _signal_group(self, child: _Child, signum: int) -> None:
        # Our own leader cannot be reaped before _on_ready runs, so its group id is ours. An
        # adopted leader could be; checking its pidfd first narrows that to nothing practical.
        if not child.ours and pidfiles.has_exited(child.pidfd):
            return
        _killpg(child.pid, signum)

    def terminate_all(self, grace: float) -> None:
        for key in list(self._live):
            self.kill(key, grace)

    async def wait_idle(self) -> None:
        """Wait until no process is running."""
        await self._idle.wait()

    def detach(self) -> None:
        """Stop watching without killing: the processes keep running, their records stay."""
        self._spill_timer.cancel()
        self._sweeper.stop()
        self.record_pending()
        for child in self._live.values():
            self._unwatch(child)
        self._live.clear()
        self._loop.remove_reader(self._exits.fileno())
        self._exits.close()
        self._journal.close()
        self.logs.close()


def kill_orphans(state_dir: str | os.PathLike[str]) -> int:
    """SIGKILL the process groups a dead agent left behind; return how many were killed.

    Each record in ``STATE_DIR/pids`` is acted on only if its leader is still the same process
    (same start time and group), so a reused pid is never killed. All records are removed.
    Raises ``StateDirBusy`` if an agent still runs on ``state_dir``.
    """
    with _dead_agents_journal(Path(state_dir)) as journal:
        if journal is None:
            return 0  # no agent ever ran there
        killed = 0
        for pid, record in journal.records().items():
            # A zombie leader still pins its group id: its stragglers are safe to kill
            # too, but only a leader that was still running counts as killed.
            if pidfiles.same_process(pid, record):
                running = pidfiles.still_running(pid, record)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(record.pgid, signal.SIGKILL)
                    killed += 1 if running else 0
        journal.clear()
        return killed


def last_reports(state_dir: str | os.PathLike[str]) -> list[ProcessReport] | None:
    """What a dead agent would have reported of the rounds its dispatcher had not forgotten,
    as its journal says (the reports themselves may have died with it): ``running`` for
    those it had started and not seen end, ``exited`` as they ended for the others. None
    while an agent still runs there."""
    try:
        with _dead_agents_journal(Path(state_dir)) as journal:
            if journal is None:
                return []
            running = [_running_report(pid, r) for pid, r in journal.records().items()]
            return running + [_ended_report(entry) for entry in journal.finished()]
    except pidfiles.StateDirBusy:
        return None


def print_last_reports(state_dir: str) -> None:
    """:func:`last_reports` for a driver that reads it through a shell (ssh): one line, the
    reports as a frame in hex, or ``busy`` while an agent still runs there."""
    reports = last_reports(state_dir)
    print("busy" if reports is None else encode_frame(reports).hex())


def _running_report(pid: int, record: pidfiles.PidRecord) -> ProcessReport:
    return ProcessReport(
        record.upid, record.round, RUNNING, pid, None, None, None, record.started_at, None
    )


def _ended_report(entry: pidfiles.Finished) -> ProcessReport:
    record, ending = entry.record, entry.ending
    return ProcessReport(
        record.upid,
        record.round,
        EXITED,
        entry.pid,
        ending.exit_code,
        ending.signal,
        ending.error,
        record.started_at,
        ending.ended_at,
    )


@contextlib.contextmanager
def _dead_agents_journal(root: Path) -> Iterator[pidfiles.PidJournal | None]:
    """The pid journal of ``root``'s agent, which must be dead (else ``StateDirBusy``);
    None if no agent ever ran there. Waits a little for whoever else reads it."""
    lock = pidfiles.lock_state_dir(root, wait=_DEAD_AGENT_LOCK_WAIT)
    try:
        if not (root / "pids").is_dir():
            yield None
            return
        journal = pidfiles.PidJournal(root / "pids")
        try:
            yield journal
        finally:
            journal.close()
    finally:
        os.close(lock)


def find_program(name: str, env: Mapping[str, str]) -> str:
    """``name`` itself when it holds a slash; else where the process's own PATH finds it, as
    a shell would (the dispatcher accepted the name because its PATH has it). Raises
    FileNotFoundError naming the PATH searched."""
    if "/" in name:
        return name
    path = env.get("PATH", os.defpath)
    found = shutil.which(name, path=path)
    if found is None:
        raise FileNotFoundError(errno.ENOENT, f"No such file or directory on PATH {path}", name)
    return found


def describe_spawn_error(exc: BaseException) -> str:
    """A one-line reason such as ``No such file or directory: /x``."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return f"{type(exc).__name__}: {exc}"


def _write_private(path: Path, text: str, owner: int | None = None, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode does nothing to a file that already existed
        if owner is not None:
            os.fchown(fd, owner, -1)  # the user its process runs as reads it
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _peek_exit(pidfd: int) -> bool | None:
    """Has our child exited? None: not yet; True: a zombie, unreaped, still pinning its pid
    and group id; False: already reaped by someone else. WNOWAIT leaves it unreaped."""
    try:
        result = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return None if result is None else True


def _killpg(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _reap(pid: int) -> tuple[int | None, int | None, str | None]:
    """Reap the exited leader: ``(exit_code, signal, error)``."""
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        reaped = 0
    if reaped == 0:  # someone else reaped it
        return None, None, f"exit status lost: {os.strerror(errno.ECHILD)}"
    code = os.waitstatus_to_exitcode(status)
    return (code, None, None) if code >= 0 else (None, -code, None)
