"""The agent's loop: dial the hub, say Hello, obey commands, report, reconnect.

1. Dial a dispatcher: the one that last welcomed the agent, else the next of the list (a
   standby does not listen for agents). After a whole pass over the list without a welcome,
   wait (jittered exponential backoff, 50 ms up to 2 s).
2. Prove the node's token, and have the dispatcher prove it knows the secret the token
   derives from (``corral.wire.handshake``; the token itself never travels). A dispatcher
   that cannot prove it is left like any failed connection: nothing it says is obeyed, and
   this agent's proof is never sent to it. Then send Hello with the whole inventory: every
   running round and every finished one not yet forgotten (kept on disk until then, so an
   agent restarted in between says them too), so whatever happened while disconnected
   reaches the dispatcher.
3. Welcome starts the heartbeats; Refused ends the agent (exit code 3: a wrong token must not
   retry forever). So does a whole pass over the dispatchers in which every one that
   answered failed its proof: the agent cannot tell a wrong token of its own from impostors,
   but only a wrong token makes every dispatcher fail. A Welcome of an older epoch than one
   already seen comes from a deposed dispatcher: the connection is dropped before anything
   on it is obeyed. The Welcome and each ``Renewed`` bring the list of dispatchers to
   follow.
4. Commands are idempotent: a Launch of a known ``(upid, round)`` only re-sends its report, a
   Kill of a finished round re-sends its end, a Forget of a running round is refused.
   A Launch that finds every slot busy waits in the ``LaunchQueue`` and starts, in order, as
   slots free; Kill or Withdraw drop a waiting launch, which is reported ``not_started``.
5. A dispatcher holding a lease renews it every few seconds and says so (``Renewed``); one
   silent for a whole lease has lost it, or is stuck: the agent leaves it for the next.
6. On disconnection the processes keep running and their reports are kept; go back to 1.

Asked to (``stop_after_disconnect``), an agent that has had no welcomed session for that
long stops its processes itself (SIGTERM, then SIGKILL after ``stop_grace``) and keeps
their final reports for the dispatcher it reaches next: a node cut off by a partition does
not run its work forever beside the replacements made elsewhere. A silent link counts as
gone after ``link_timeout`` seconds without an acknowledgement of its heartbeats.

Shutdown stops every process and exits 0. SIGTERM and SIGINT stop the agent only: its
processes keep running, and an agent restarted on the same state directory adopts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from corral.agent.dialing import Address, Backoff, parse_address, tune_socket
from corral.agent.identity import Identity
from corral.agent.launcher import Key, Launcher
from corral.agent.logs import DEFAULT_MAX_BYTES, DEFAULT_RETENTION
from corral.wire.codec import Connection, ConnectionClosed, ProtocolError, open_connection
from corral.wire.handshake import AuthenticationFailed, new_hello, send_hello
from corral.wire.launch_queue import LaunchQueue
from corral.wire.messages import (
    AGENT_REALM,
    PROTOCOL_VERSION,
    Forget,
    Heartbeat,
    Hello,
    Kill,
    Launch,
    Message,
    ProcessReport,
    ReadLog,
    Refused,
    Renewed,
    Shutdown,
    Welcome,
    Withdraw,
)

log = logging.getLogger("corral.agent")

EXIT_OK: Final = 0
EXIT_USAGE: Final = 2
EXIT_REFUSED: Final = 3

_YIELD_EVERY: Final = 64  # launches handled between two loop turns, so exits and heartbeats
# are not starved by a big batch and the reports leave in batches of this size


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything the agent is told on its command line."""

    #: every dispatcher of the store; the dispatchers' own list replaces it once welcomed
    dispatchers: tuple[Address, ...]
    token: str
    node_id: str
    engine: str
    hostname: str
    slots: int
    labels: dict[str, str]
    state_dir: Path
    heartbeat_period: float = 1.0
    connect_timeout: float = 5.0
    welcome_timeout: float = 10.0
    backoff_start: float = 0.05
    backoff_cap: float = 2.0
    environ: Mapping[str, str] = field(default_factory=dict)
    """The environment every process starts from (the agent's, minus its token)."""
    identity: Identity | None = None
    """Who processes run as, when not as the agent's user (``identity.resolve``)."""
    stop_after_disconnect: float | None = None
    """Seconds without a dispatcher after which the processes are stopped (None: never)."""
    stop_grace: float = 10.0
    """Seconds between SIGTERM and SIGKILL when the agent stops them on its own."""
    link_timeout: float = 30.0
    """Seconds a link may leave the heartbeats unacknowledged before it counts as gone."""
    tls: ssl.SSLContext | None = None
    """Dial the dispatchers over TLS with this context (None: plain TCP)."""
    log_max_bytes: int = DEFAULT_MAX_BYTES
    """The newest bytes each process's stdout and stderr log keeps (0: all of them)."""
    log_retention: float = DEFAULT_RETENTION
    """Seconds the logs of a process that no longer runs here stay unwritten (0: always)."""


class _End(enum.Enum):
    UNREACHABLE = "unreachable"  # no connection: try the next dispatcher
    LOST = "lost"  # never welcomed: try the next dispatcher
    UNPROVEN = "unproven"  # failed its proof: try the next dispatcher
    DEPOSED = "deposed"  # welcomed in an older epoch, or silent past its lease: the next one
    WELCOMED = "welcomed"  # a good session ended: reconnect quickly, to the same one first
    REFUSED = "refused"
    SHUT_DOWN = "shut down"


class Agent:
    """One node agent: its inventory of process rounds and its link to the dispatcher."""

    def __init__(self, config: AgentConfig) -> None:
        self._config = config
        self._inventory: dict[Key, ProcessReport] = {}
        self._queue = LaunchQueue(config.slots)
        self._due_scheduled = False
        self._conn: Connection | None = None
        self._launcher: Launcher | None = None
        self._signalled = False
        self._self_stop: asyncio.TimerHandle | None = None
        self._unreachable: set[Address] = set()
        self._dispatchers: list[Address] = list(config.dispatchers)
        #: the dispatcher to dial next, as an index of ``_dispatchers``
        self._next = 0
        #: the highest epoch a dispatcher welcomed this agent in
        self.epoch = 0
        #: how long the current dispatcher may stay silent (0: it holds no lease)
        self._lease_duration = 0.0
        self._lease_timer: asyncio.TimerHandle | None = None
        #: whether the lease watch closed the connection
        self._lapsed = False

    @property
    def launcher(self) -> Launcher:
        assert self._launcher is not None, "the launcher exists once run() has started"
        return self._launcher

    async def run(self) -> int:
        """Serve until Shutdown (0), Refused (3), or SIGTERM/SIGINT (0, processes left running)."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum, task)
        cfg = self._config
        self._launcher = Launcher(
            cfg.state_dir,
            self._on_exit,
            cfg.environ,
            cfg.identity,
            cfg.log_max_bytes,
            cfg.log_retention,
        )
        for report in self._launcher.adopt():
            self._inventory[(report.upid, report.round)] = report
            log.info("adopted %s round %s: %s", report.upid, report.round, report.status)
        self._arm_self_stop()  # not connected yet: the clock runs from the start
        try:
            return await self._serve()
        except asyncio.CancelledError:
            if not self._signalled:
                raise
            log.info("stopping; %d processes keep running", self._launcher.running)
            self._launcher.detach()
            return EXIT_OK
        finally:
            if self._self_stop is not None:
                self._self_stop.cancel()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            if self._conn is not None:
                self._conn.close()

    def _on_signal(self, signum: int, task: asyncio.Task[int]) -> None:
        # The stop is this one cancel. Hence asyncio.timeout throughout, never wait_for: on
        # Python 3.11 wait_for swallows a cancel that lands as what it awaits completes.
        log.info("received signal %d", signum)
        self._signalled = True
        task.cancel()

    async def _serve(self) -> int:
        backoff = Backoff(self._config.backoff_start, self._config.backoff_cap)
        failed = 0  # dispatchers tried in a row without a welcome
        ends: list[_End] = []  # how each dispatcher of this pass ended
        while True:
            end = await self._session(self._dispatchers[self._next])
            if end is _End.REFUSED:
                return EXIT_REFUSED
            if end is _End.SHUT_DOWN:
                return EXIT_OK
            if end is _End.WELCOMED:
                backoff.reset()
                failed = 0
                ends.clear()
            else:
                self._next = (self._next + 1) % len(self._dispatchers)
                failed += 1
                ends.append(end)
                if failed % len(self._dispatchers):
                    continue  # the rest of the pass at once: one of them may be active
                if _no_dispatcher_knows_the_token(ends):
                    log.error(
                        "refused: no dispatcher proved it knows this node's token, so the "
                        "token is wrong (or every dispatcher that answered is an impostor)"
                    )
                    return EXIT_REFUSED
                ends.clear()
            await asyncio.sleep(backoff.next())

    # --- one connection -----------------------------------------------------------------------

    async def _session(self, address: Address) -> _End:
        conn = await self._dial(address)
        if conn is None:
            return _End.UNREACHABLE
        try:
            return await self._converse(conn, address)
        finally:
            self._conn = None
            self._disarm()
            conn.close()
            self._arm_self_stop()

    async def _dial(self, address: Address) -> Connection | None:
        host, port = address
        try:
            async with asyncio.timeout(self._config.connect_timeout):
                conn = await open_connection(host, port, ssl=self._config.tls)
        except (OSError, TimeoutError) as exc:
            # One line per outage, not one per attempt.
            level = logging.DEBUG if address in self._unreachable else logging.WARNING
            log.log(level, "cannot reach the dispatcher at %s:%s: %s", host, port, exc)
            self._unreachable.add(address)
            return None
        self._unreachable.discard(address)
        tune_socket(conn, self._config.link_timeout)
        log.info("connected to %s", conn.peer)
        return conn

    async def _converse(self, conn: Connection, address: Address) -> _End:
        heartbeats: asyncio.Task[None] | None = None
        try:
            welcomed = await self._handshake(conn, address)
            if isinstance(welcomed, _End):
                return welcomed
            welcome, rest = welcomed
            self._disarm_self_stop()
            period = welcome.heartbeat_period
            if period <= 0:
                period = self._config.heartbeat_period
            heartbeats = asyncio.create_task(self._heartbeats(conn, max(period, 0.01)))
            log.info(
                "welcomed by %s in epoch %d; heartbeat every %.3gs", conn.peer, self.epoch, period
            )
            batch = rest
            while not await self._obey(conn, batch):
                batch = await conn.read_batch()
            return _End.SHUT_DOWN
        except ConnectionClosed as exc:
            if self._lapsed:
                return _End.DEPOSED  # closed by the lease watch: try the next dispatcher
            log.info("disconnected: %s", exc.message)
            return _End.WELCOMED if heartbeats is not None else _End.LOST
        except (ProtocolError, OSError) as exc:
            log.error("dropping the connection to %s: %s", conn.peer, exc)
            return _End.LOST
        finally:
            if heartbeats is not None:
                heartbeats.cancel()

    # --- on its own ---------------------------------------------------------------------------

    def _arm_self_stop(self) -> None:
        """Start counting the time without a dispatcher, unless already counting."""
        after = self._config.stop_after_disconnect
        if after is None or self._self_stop is not None:
            return
        self._self_stop = asyncio.get_running_loop().call_later(after, self._stop_alone)

    def _disarm_self_stop(self) -> None:
        if self._self_stop is not None:
            self._self_stop.cancel()
            self._self_stop = None

    def _stop_alone(self) -> None:
        # What waits for a slot must not start in the slots the stopped processes free.
        for report in self._queue.drop_all():
            self._inventory[(report.upid, report.round)] = report
        running = self.launcher.running
        if running:
            log.warning(
                "no dispatcher for %gs: stopping %d process(es) (grace %gs); their reports "
                "wait for the next dispatcher",
                self._config.stop_after_disconnect,
                running,
                self._config.stop_grace,
            )
            self.launcher.terminate_all(self._config.stop_grace)

    async def _handshake(
        self, conn: Connection, address: Address
    ) -> tuple[Welcome, list[Message]] | _End:
        """The proofs, Hello, then the dispatcher's answer: its Welcome and what came with it,
        or the end."""
        cfg = self._config
        # A dispatcher that accepts connections but never answers is stuck: after a lease
        # (when one is known) try the next.
        timeout = self._lease_duration or cfg.welcome_timeout
        introduction = new_hello(PROTOCOL_VERSION, AGENT_REALM, cfg.node_id, cfg.hostname)
        try:
            async with asyncio.timeout(timeout):
                await send_hello(conn, cfg.token, introduction)
        except AuthenticationFailed as exc:
            log.error(
                "refused the dispatcher at %s: it did not prove it knows this node's token"
                " (an impostor, or this agent's token is wrong): %s",
                conn.peer,
                exc.message,
            )
            return _End.UNPROVEN
        except TimeoutError:
            log.warning("no answer to the handshake from %s within %ss", conn.peer, timeout)
            return _End.LOST
        await conn.send_now(self._hello())
        # From here on every report is sent as it happens; the Hello came first.
        self._conn = conn
        try:
            async with asyncio.timeout(timeout):
                batch = await conn.read_batch()
        except TimeoutError:
            log.warning("no Welcome from %s within %ss", conn.peer, timeout)
            return _End.LOST
        first = batch[0] if batch else None
        if isinstance(first, Refused):
            log.error("the dispatcher refused this agent: %s", first.reason)
            return _End.REFUSED
        if not isinstance(first, Welcome):
            raise ProtocolError(f"expected Welcome or Refused, got {type(first).__name__}")
        if first.epoch < self.epoch:
            log.warning(
                "%s welcomed this agent in epoch %d, but epoch %d has begun: a deposed"
                " dispatcher; leaving it, nothing it sent obeyed",
                conn.peer,
                first.epoch,
                self.epoch,
            )
            return _End.DEPOSED
        self.epoch = first.epoch
        self._lease_duration = first.lease_duration
        self._follow(first.dispatchers, address)
        self._arm(conn)
        return first, batch[1:]

    def _renewed(self, conn: Connection, msg: Renewed) -> None:
        if msg.epoch != self.epoch:
            raise ProtocolError(f"a renewal of epoch {msg.epoch} on a connection of {self.epoch}")
        self._arm(conn)
        self._follow(msg.dispatchers, self._dispatchers[self._next])

    def _follow(self, listed: list[str], current: Address) -> None:
        """Take the dispatchers' own list (``current`` stays in it, as the one to dial next)."""
        found = [a for a in (parse_address(text) for text in listed) if a is not None]
        if not found:
            return
        if current not in found:
            found.insert(0, current)
        if found != self._dispatchers:
            log.info("dispatchers: %s", ", ".join(f"{h}:{p}" for h, p in found))
            self._dispatchers = found
        self._next = found.index(current)

    # --- the lease watch: a dispatcher silent for a whole lease is left -----------------------

    def _arm(self, conn: Connection) -> None:
        self._disarm()
        self._lapsed = False
        if self._lease_duration > 0:
            loop = asyncio.get_running_loop()
            self._lease_timer = loop.call_later(self._lease_duration, self._lapse, conn)

    def _disarm(self) -> None:
        if self._lease_timer is not None:
            self._lease_timer.cancel()
            self._lease_timer = None

    def _lapse(self, conn: Connection) -> None:
        log.warning(
            "%s has not renewed its lease for %.3gs: it lost it or is stuck; leaving it",
            conn.peer,
            self._lease_duration,
        )
        self._lapsed = True
        conn.close()

    def _hello(self) -> Hello:
        cfg = self._config
        return Hello(
            node_id=cfg.node_id,
            engine=cfg.engine,
            hostname=cfg.hostname,
            slots=cfg.slots,
            labels=dict(cfg.labels),
            pid=os.getpid(),
            version=PROTOCOL_VERSION,
            inventory=[*self._inventory.values(), *self._queue.reports()],
        )

    async def _heartbeats(self, conn: Connection, period: float) -> None:
        while True:
            conn.send(Heartbeat(time.time(), self.launcher.running))
            await asyncio.sleep(period)

    async def _obey(self, conn: Connection, batch: list[Message]) -> bool:
        """Carry out a batch of commands; True when one of them was Shutdown."""
        launches = 0
        for msg in batch:
            if isinstance(msg, Launch):
                self._launch(msg)
                launches += 1
                if launches % _YIELD_EVERY == 0:
                    # Reports leave only when the loop turns: their records must exist first.
                    self.launcher.record_pending()
                    await asyncio.sleep(0)
            elif isinstance(msg, Kill):
                self._kill(msg)
            elif isinstance(msg, Withdraw):
                self._withdraw(msg)
            elif isinstance(msg, Forget):
                self._forget(msg)
            elif isinstance(msg, ReadLog):
                conn.send(
                    self.launcher.logs.read_chunk(
                        msg.request_id,
                        msg.upid,
                        msg.stream,
                        msg.offset,
                        msg.limit,
                    )
                )
            elif isinstance(msg, Shutdown):
                await self._shutdown(conn, msg.grace)
                return True
            elif isinstance(msg, Renewed):
                self._renewed(conn, msg)
            else:
                raise ProtocolError(f"an agent does not accept {type(msg).__name__}")
        self.launcher.record_pending()
        return False

    # --- commands -----------------------------------------------------------------------------

    def _send(self, report: ProcessReport) -> None:
        if self._conn is not None:
            self._conn.send(report)

    def _launch(self, msg: Launch) -> None:
        key = (msg.upid, msg.round)
        known = self._inventory.get(key)
        if known is not None:
            self._send(known)  # a repeated Launch: say where that round is, start nothing
            return
        self._queue.add(msg)
        self._start_due()

    def _start_due(self) -> None:
        """Start queued launches while a slot is free, oldest first."""
        self._due_scheduled = False
        while (launch := self._queue.next_due(self.launcher.running)) is not None:
            self._start(launch)

    def _start(self, msg: Launch) -> None:
        key = (msg.upid, msg.round)
        report = self.launcher.spawn(msg)
        self._inventory[key] = report
        if report.error is None:
            # Per-process lines are debug: at a thousand launches a second, writing them
            # costs the agent more than the launches.
            log.debug("started %s round %s: pid %s", msg.upid, msg.round, report.pid)
        else:
            log.warning("cannot start %s round %s: %s", msg.upid, msg.round, report.error)
        self._send(report)

    def _on_exit(self, report: ProcessReport) -> None:
        self._inventory[(report.upid, report.round)] = report
        how = (
            f"exit code {report.exit_code}"
            if report.exit_code is not None
            else f"signal {report.signal}"
            if report.signal is not None
            else report.error
        )
        log.debug("%s round %s (pid %s) ended: %s", report.upid, report.round, report.pid, how)
        self._send(report)
        if self._queue and not self._due_scheduled:
            # Once per loop turn, for every exit of the turn; record_pending then writes the
            # pid records of what started before its reports can leave.
            self._due_scheduled = True
            asyncio.get_running_loop().call_soon(self._start_queued_after_exits)

    def _start_queued_after_exits(self) -> None:
        self._start_due()
        self.launcher.record_pending()

    def _drop_queued(self, key: Key) -> bool:
        """Take a round that has not started out of the queue and report it never ran."""
        report = self._queue.drop(key)
        if report is None:
            return False
        log.info("dropped %s round %s before it started", *key)
        self._inventory[key] = report  # kept, as any end, until the dispatcher forgets it
        self._send(report)
        return True

    def _withdraw(self, msg: Withdraw) -> None:
        key = (msg.upid, msg.round)
        if not self._drop_queued(key) and key in self._inventory:
            self._send(self._inventory[key])  # it started meanwhile: say how it is

    def _kill(self, msg: Kill) -> None:
        key = (msg.upid, msg.round)
        if self._drop_queued(key):
            return
        if self.launcher.kill(key, msg.grace):
            log.info("terminating %s round %s (grace %.3gs)", msg.upid, msg.round, msg.grace)
            return
        known = self._inventory.get(key)
        if known is not None:
            self._send(known)  # already over: tell the dispatcher how it ended
        else:
            log.warning("kill for unknown %s round %s ignored", msg.upid, msg.round)

    def _forget(self, msg: Forget) -> None:
        key = (msg.upid, msg.round)
        # The dispatcher recorded that round's end: a launch of it still queued must never run.
        self._queue.drop(key)
        known = self._inventory.get(key)
        if known is None:
            return
        if self.launcher.is_live(key):
            # Dropping a live round would leave a process nobody tracks: say it still runs.
            log.warning("forget for running %s round %s refused", msg.upid, msg.round)
            self._send(known)
            return
        del self._inventory[key]
        self.launcher.forget(key)

    async def _shutdown(self, conn: Connection, grace: float) -> None:
        log.info("shutting down: terminating %d processes", self.launcher.running)
        for report in self._queue.drop_all():
            self._inventory[(report.upid, report.round)] = report
            self._send(report)
        self.launcher.terminate_all(grace)
        try:
            # SIGKILL lands at ``grace``; a process stuck in the kernel may outlast even that.
            async with asyncio.timeout(grace + 5.0):
                await self.launcher.wait_idle()
        except TimeoutError:
            log.error("%d processes survived SIGKILL", self.launcher.running)
        # If the dispatcher is gone, these reports die with the agent: its processes are
        # gone too, and a Shutdown is only sent by a dispatcher that wants the node empty.
        with contextlib.suppress(ConnectionClosed):
            await conn.drain()


def _no_dispatcher_knows_the_token(ends: list[_End]) -> bool:
    """Whether, in a pass, every dispatcher that could be reached failed its proof."""
    reached = [end for end in ends if end is not _End.UNREACHABLE]
    return bool(reached) and all(end is _End.UNPROVEN for end in reached)
