"""Running, watching and killing the agent's processes, each in its own process group.

The spawn helper (``spawner``, a process of its own) starts them: a spawn waits for the
child's exec, and the agent's loop must not. A process starts in a new session, so that it
leads its own process group, with stdin on /dev/null and stdout/stderr appended to its logs
(see ``logs.LogSpool``). ``spawn`` prepares a round and asks the helper; the helper's
answer (started, with its pid, or failed) reaches ``on_started``, its exit ``on_exit``. The
helper is their parent: it kills a leader's stragglers while the unreaped leader pins the
group id, reaps it and reports its exit code or signal, and it signals a group for the
launcher only while its leader is unreaped, so the group cannot be a stranger's.

Processes outlive the agent: the records in ``STATE_DIR/pids`` (written by the helper before
a start is reported) let a restarted agent adopt them (their exit status is then
unknowable, since they are no longer its children; their exits are watched with pidfds in
the launcher's own epoll set) and let ``kill_orphans`` clean up after an agent that is gone
for good. If the helper itself dies, its processes are adopted the same way and a new
helper is started.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import select
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from corral.agent import pidfiles
from corral.agent.identity import Identity, Refuse, RunAs
from corral.agent.logs import SPILL_EVERY, LogSpool, safe_name
from corral.agent.spawn_link import SpawnLink
from corral.agent.spawner import describe_spawn_error
from corral.wire.messages import EXITED, RUNNING, SPAWN_FAILED, Launch, ProcessReport

log = logging.getLogger("corral.agent")

Key = tuple[str, int]
"""A process round: ``(upid, round)``."""

UNKNOWN_STATUS = "exit status unknown: the process was adopted after an agent restart"
ENDED_UNWATCHED = "exit status unknown: the process ended while no agent was watching it"
HELPER_LOST = "exit status unknown: the spawn helper, its parent, stopped"


@dataclass(slots=True)
class _Child:
    """A live process round the launcher watches."""

    report: ProcessReport
    pid: int
    #: the pidfd an adopted process is watched with; -1 for the helper's own children
    pidfd: int
    ours: bool  # True: the helper's child, which it reaps; False: adopted
    config_path: Path
    kill_timer: asyncio.TimerHandle | None = None
    kill_at: float | None = None


@dataclass(slots=True)
class _Starting:
    """A round the helper was asked to start and has not answered for yet."""

    launch: Launch
    config_path: Path
    #: a kill asked meanwhile: its grace, applied once the round has started
    kill_grace: float | None = None


class Launcher:
    """Runs process rounds: ``on_started`` gets the first report of each (running, or
    spawn_failed), ``on_exit`` the final one."""

    def __init__(
        self,
        state_dir: Path,
        on_started: Callable[[ProcessReport], None],
        on_exit: Callable[[ProcessReport], None],
        environ: Mapping[str, str],
        identity: Identity | None = None,
    ) -> None:
        """``identity`` starts the processes as another user (or refuses to start them);
        None runs them as the agent's own user (see ``identity``)."""
        self._state_dir = state_dir
        self._pids_dir = state_dir / "pids"
        self._identity = identity
        self._owner = identity.owner if identity is not None else None
        self._config_dir = (
            identity.config_dir(state_dir) if identity is not None else state_dir / "config"
        )
        # Most processes have no configuration: they share one file instead of costing a
        # file creation each (syscalls are dear here).
        self._empty_config = self._config_dir / "empty.json"
        # shared by the processes of another user too: theirs to read, not to change
        _write_private(self._empty_config, "{}", mode=0o600 if self._owner is None else 0o644)
        self._on_started = on_started
        self._on_exit = on_exit
        self._environ = dict(environ)
        self._loop = asyncio.get_running_loop()
        self._live: dict[Key, _Child] = {}
        self._ours: dict[int, Key] = {}  # the helper's children, by pid
        self._starting: dict[int, _Starting] = {}  # by token
        self._starting_keys: dict[Key, int] = {}
        self._tokens = itertools.count(1)
        self._exits = select.epoll()
        self._pidfds: dict[int, Key] = {}
        self._loop.add_reader(self._exits.fileno(), self._on_exits)
        self._idle = asyncio.Event()
        self._idle.set()
        self.logs = LogSpool(state_dir)
        self._spill_timer = self._loop.call_later(SPILL_EVERY, self._spill)
        self._link = self._start_helper()

    @property
    def running(self) -> int:
        """Rounds holding a slot: live, or being started."""
        return len(self._live) + len(self._starting)

    def is_live(self, key: Key) -> bool:
        return key in self._live or key in self._starting_keys

    def is_starting(self, key: Key) -> bool:
        return key in self._starting_keys

    def _start_helper(self) -> SpawnLink:
        run_as = self._identity.spawn_as() if isinstance(self._identity, RunAs) else None
        return SpawnLink(self._state_dir, self._environ, run_as, self)

    # --- spawning -----------------------------------------------------------------------------

    def spawn(self, launch: Launch) -> ProcessReport | None:
        """Start a round. A round that cannot start at all gets its ``spawn_failed`` report
        at once; otherwise None, and ``on_started`` gets the helper's answer."""
        try:
            self._ask(launch)
        except (OSError, ValueError) as exc:
            now = time.time()
            return _failed(launch, describe_spawn_error(exc), now)
        return None

    def _drop_config(self, path: Path) -> None:
        if path != self._empty_config:
            path.unlink(missing_ok=True)

    def _config_path(self, upid: str, round_: int) -> Path:
        return self._config_dir / f"{safe_name(upid)}.{round_}.json"

    def _ask(self, launch: Launch) -> None:
        if isinstance(self._identity, Refuse):
            raise PermissionError(errno.EPERM, self._identity.reason)
        if launch.configuration == "{}":
            config_path = self._empty_config
        else:
            config_path = self._config_path(launch.upid, launch.round)
            _write_private(config_path, launch.configuration, owner=self._owner)
        env = {
            **launch.env,
            "CORRAL_UPID": launch.upid,
            "CORRAL_ROUND": str(launch.round),
            "CORRAL_CONFIGURATION": launch.configuration,
            "CORRAL_CONFIGURATION_FILE": str(config_path),
        }
        try:
            program = find_program(launch.exec, env if "PATH" in env else self._environ)
            self.logs.watch(launch.upid)
        except BaseException:
            self._drop_config(config_path)
            raise
        token = next(self._tokens)
        key = (launch.upid, launch.round)
        self._starting[token] = _Starting(launch, config_path)
        self._starting_keys[key] = token
        self._idle.clear()
        self._link.spawn(
            token,
            launch.upid,
            launch.round,
            program,
            [launch.exec, *launch.argv],
            env,
            launch.working_directory,
        )

    # --- the helper's answers (see spawn_link.SpawnAnswers) -----------------------------------

    def started(self, token: int, pid: int, started_at: float) -> None:
        starting = self._take(token)
        if starting is None:
            return
        launch = starting.launch
        report = ProcessReport(
            launch.upid, launch.round, RUNNING, pid, None, None, None, started_at, None
        )
        self._live[(launch.upid, launch.round)] = _Child(
            report, pid, -1, True, starting.config_path
        )
        self._ours[pid] = (launch.upid, launch.round)
        self._on_started(report)
        if starting.kill_grace is not None:
            self.kill((launch.upid, launch.round), starting.kill_grace)

    def failed(self, token: int, reason: str) -> None:
        starting = self._take(token)
        if starting is None:
            return
        self._drop_config(starting.config_path)
        self.logs.settle(starting.launch.upid)
        self._settle_idle()
        self._on_started(_failed(starting.launch, reason, time.time()))

    def exited(self, pid: int, exit_code: int | None, signum: int | None) -> None:
        key = self._ours.pop(pid, None)
        child = self._live.pop(key) if key is not None else None
        if child is not None:
            self._finish(child, exit_code, signum, None)

    def link_lost(self, reason: str) -> None:
        """The helper stopped on its own: adopt its processes, start another."""
        log.error("the spawn helper stopped (%s): adopting its processes", reason)
        records = {
            (r.upid, r.round): (pid, r)
            for pid, r in pidfiles.read_records(self._pids_dir)
            if r is not None
        }
        for pid, key in list(self._ours.items()):
            child = self._live.pop(key)
            found = records.get(key)
            pidfd = pidfiles.open_pidfd_if_same(pid, found[1]) if found else None
            if pidfd is None:
                pidfiles.remove_record(self._pids_dir, pid)
                self._finish(child, None, None, HELPER_LOST)
            else:
                child.ours, child.pidfd = False, pidfd
                self._watch(child)
        self._ours.clear()
        # A start it made but never answered for has its record, if it got that far.
        for token, starting in list(self._starting.items()):
            key = (starting.launch.upid, starting.launch.round)
            found = records.get(key)
            if found is None or (pidfd := pidfiles.open_pidfd_if_same(*found)) is None:
                self.failed(token, "the spawn helper stopped before it started the process")
                continue
            self._take(token)
            pid, record = found
            report = ProcessReport(
                key[0], key[1], RUNNING, pid, None, None, None, record.started_at, None
            )
            self._watch(_Child(report, pid, pidfd, False, starting.config_path))
            self._on_started(report)
        self._link = self._start_helper()

    def _take(self, token: int) -> _Starting | None:
        starting = self._starting.pop(token, None)
        if starting is not None:
            del self._starting_keys[(starting.launch.upid, starting.launch.round)]
        return starting

    # --- adopted processes --------------------------------------------------------------------

    def _watch(self, child: _Child) -> None:
        key = (child.report.upid, child.report.round)
        self._live[key] = child
        self._idle.clear()
        self._pidfds[child.pidfd] = key
        self._exits.register(child.pidfd, select.EPOLLIN)

    def _spill(self) -> None:
        self.logs.spill_due()
        self._spill_timer = self._loop.call_later(SPILL_EVERY, self._spill)

    def adopt(self) -> list[ProcessReport]:
        """Take over the processes a previous agent left running; report the ones that ended.

        Reports come back for every record found: ``running`` for a process still alive
        (watched from now on), ``exited`` with an unknown status for one that is gone.
        """
        reports = []
        for pid, record in pidfiles.read_records(self._pids_dir):
            if record is None:
                pidfiles.remove_record(self._pids_dir, pid)
                continue
            if (record.upid, record.round) in self._live:
                continue  # this agent's own (its helper wrote the record)
            pidfd = pidfiles.open_pidfd_if_same(pid, record)
            if pidfd is None:
                reports.append(self._ended_unwatched(pid, record))
                continue
            report = ProcessReport(
                record.upid, record.round, RUNNING, pid, None, None, None, record.started_at, None
            )
            key = (record.upid, record.round)
            config_path = self._config_path(*key)
            self._watch(_Child(report, pid, pidfd, False, config_path))
            self.logs.adopt(record.upid)
            reports.append(report)
        self.logs.recover()
        return reports

    def _ended_unwatched(self, pid: int, record: pidfiles.PidRecord) -> ProcessReport:
        pidfiles.remove_record(self._pids_dir, pid)
        with contextlib.suppress(ValueError):
            self._config_path(record.upid, record.round).unlink(missing_ok=True)
        return ProcessReport(
            record.upid,
            record.round,
            EXITED,
            pid,
            None,
            None,
            ENDED_UNWATCHED,
            record.started_at,
            None,
        )

    def _on_exits(self) -> None:
        for pidfd, _ in self._exits.poll(0):
            key = self._pidfds.pop(pidfd, None)
            child = self._live.pop(key) if key is not None else None
            if child is None:
                continue
            os.close(pidfd)  # which takes it out of the epoll set
            # Someone else reaps an adopted leader, and its group id may be reused since:
            # leave that group alone rather than risk killing a stranger.
            pidfiles.remove_record(self._pids_dir, child.pid)
            self._finish(child, None, None, UNKNOWN_STATUS)

    # --- exits --------------------------------------------------------------------------------

    def _finish(
        self, child: _Child, exit_code: int | None, signum: int | None, error: str | None
    ) -> None:
        if child.kill_timer is not None:
            child.kill_timer.cancel()
        self._drop_config(child.config_path)
        self.logs.settle(child.report.upid)
        report = replace(
            child.report,
            status=EXITED,
            exit_code=exit_code,
            signal=signum,
            error=error,
            ended_at=time.time(),
        )
        self._settle_idle()
        self._on_exit(report)

    def _settle_idle(self) -> None:
        if not self._live and not self._starting:
            self._idle.set()

    # --- killing ------------------------------------------------------------------------------

    def kill(self, key: Key, grace: float) -> bool:
        """SIGTERM the round's process group; SIGKILL it after ``grace`` seconds if alive.

        Returns False when the round is not running. A repeated kill only ever brings the
        SIGKILL closer. A round still starting is killed as soon as it has started.
        """
        token = self._starting_keys.get(key)
        if token is not None:
            starting = self._starting[token]
            if starting.kill_grace is None or grace < starting.kill_grace:
                starting.kill_grace = grace
            return True
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
        if child.ours:
            # The helper signals only a leader it has not reaped: its group id is its own.
            self._link.signal(child.pid, signum)
            return
        # An adopted leader could have been reaped; checking its pidfd first narrows that to
        # nothing practical.
        if pidfiles.has_exited(child.pidfd):
            return
        _killpg(child.pid, signum)

    def terminate_all(self, grace: float) -> None:
        for key in [*self._live, *self._starting_keys]:
            self.kill(key, grace)

    async def wait_idle(self) -> None:
        """Wait until no process is running or starting."""
        await self._idle.wait()

    def detach(self) -> None:
        """Stop watching without killing: the processes keep running, their records stay.

        The helper leaves once it has answered what it was asked (a round it starts meanwhile
        has its record, and the next agent adopts it).
        """
        self._spill_timer.cancel()
        self._link.close()
        for key, child in list(self._live.items()):
            if child.kill_timer is not None:
                child.kill_timer.cancel()
            if not child.ours:
                del self._pidfds[child.pidfd]
                os.close(child.pidfd)
            del self._live[key]
        self._loop.remove_reader(self._exits.fileno())
        self._exits.close()


def _failed(launch: Launch, reason: str, now: float) -> ProcessReport:
    return ProcessReport(
        launch.upid, launch.round, SPAWN_FAILED, None, None, None, reason, now, now
    )


def kill_orphans(state_dir: str | os.PathLike[str]) -> int:
    """SIGKILL the process groups a dead agent left behind; return how many were killed.

    Each record in ``STATE_DIR/pids`` is acted on only if its leader is still the same process
    (same start time and group), so a reused pid is never killed. All records are removed.
    Raises ``StateDirBusy`` if an agent still runs on ``state_dir``.
    """
    root = Path(state_dir)
    lock = pidfiles.lock_state_dir(root)
    try:
        killed = 0
        for pid, record in pidfiles.read_records(root / "pids"):
            # A zombie leader still pins its group id: its stragglers are safe to kill too,
            # but only a leader that was still running counts as killed.
            if record is not None and pidfiles.same_process(pid, record):
                running = pidfiles.still_running(pid, record)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(record.pgid, signal.SIGKILL)
                    killed += 1 if running else 0
            pidfiles.remove_record(root / "pids", pid)
        return killed
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


def _write_private(path: Path, text: str, owner: int | None = None, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode does nothing to a file that already existed
        if owner is not None:
            os.fchown(fd, owner, -1)  # the user its process runs as reads it
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _killpg(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)
