"""The node side of the dispatcher: agents joining and leaving, health, and the pool.

Agents join through the hub; their reports go to the syncer. A periodic tick classifies
heartbeats by the dispatcher's own monotonic clock, compares nodes with the driver's
instance list, declares lost the nodes that are missing, never joined or whose instance
vanished, and boots and retires what the planner asks for. Commands to agents (launch, kill, read a
log) are sent from here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from corral.clock import Clock
from corral.config import Config
from corral.core.ids import EngineId, NodeId, Round, Upid
from corral.core.model import Engine, InstanceType, NodeRecord, ProcessRecord
from corral.core.node_states import Health, IdleBehavior, NodeState, classify_health
from corral.core.planner import PoolNode, plan
from corral.core.process_states import ProcessEvent, ProcessState
from corral.dispatcher.log_reads import LogReads
from corral.dispatcher.partitions import Partitions
from corral.dispatcher.rounds import moved
from corral.dispatcher.state import State
from corral.dispatcher.syncer import Syncer
from corral.errors import Conflict, NotFound, Unavailable
from corral.hub import AgentSession
from corral.pool import NodePool
from corral.wire.messages import (
    QUEUED,
    RUNNING,
    Forget,
    Heartbeat,
    Kill,
    Launch,
    LogChunk,
    Message,
    ProcessReport,
    Renewed,
    Shutdown,
    Welcome,
)

log = logging.getLogger("corral.nodes")

#: how often instances are listed through the drivers, in ticks
LIST_EVERY = 5


@dataclass(slots=True)
class _Live:
    """What is known of a node beyond its record: its connection and what it runs."""

    heard: float
    session: AgentSession | None = None
    instances: dict[tuple[str, int], str] = field(default_factory=dict)
    #: bumped when ``instances`` or ``session`` change
    version: int = 0


class Nodes:
    def __init__(
        self,
        state: State,
        config: Config,
        clock: Clock,
        pool: NodePool,
        wake_mapper: Callable[[], None],
        on_boot: Callable[[str, str, float | None], None] | None = None,
    ) -> None:
        self._state = state
        self._config = config
        self._engines = {e.engine_id: e for e in config.engines}
        self._clock = clock
        self._pool = pool
        self._wake_mapper = wake_mapper
        self._started = clock.monotonic()
        self._live: dict[NodeId, _Live] = {}
        self._logs = LogReads()
        self._ticks = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._unoccupied_since: dict[NodeId, float] = {}
        #: nodes whose heartbeats were healthy at the last tick, or that joined since
        self._healthy: set[NodeId] = set()
        #: told (engine, outcome, seconds) when a boot ends: joined, failed or timed_out
        self._on_boot = on_boot or (lambda engine, outcome, seconds: None)
        self._booted_at: dict[NodeId, float] = {}
        self._retiring: set[NodeId] = set()
        #: what each Welcome says: the lease's epoch and duration, and where the
        #: dispatchers are (this one first)
        self.epoch = 0
        self.lease_duration = 0.0
        self.dispatchers: list[str] = []
        self.syncer = Syncer(
            state, clock, self.send, self.kill, self.launch_one, wake_mapper, None, self._engines
        )
        self.partitions = Partitions(state, self._engines, clock, self.syncer, self.lose)

    # -- agents (the hub's handler) -------------------------------------------

    def agent_joined(self, session: AgentSession) -> str | None:
        hello = session.hello
        engine = self._engines.get(EngineId(hello.engine))
        if engine is None:
            return f"engine {hello.engine!r} is not configured on this dispatcher"
        node = self._state.nodes.get(session.node_id)
        if node is not None and node.engine != engine.engine_id:
            return f"node {hello.node_id!r} belongs to engine {node.engine!r}"
        if node is not None and node.state in (NodeState.SHUTTING_DOWN, NodeState.GONE):
            return f"node {hello.node_id!r} is being retired"
        booted_at = self._booted_at.pop(session.node_id, None)
        if booted_at is not None:
            self._on_boot(engine.engine_id, "joined", self._clock.monotonic() - booted_at)
        joined = NodeRecord(
            node_id=session.node_id,
            engine=engine.engine_id,
            state=NodeState.IDLE,
            slots=hello.slots,
            hostname=hello.hostname,
            labels={**engine.labels, **hello.labels},
            instance_id=node.instance_id if node else None,
            created_at=node.created_at if node else self._clock.time(),
            # what the operator and the pool decided outlives a reconnection
            idle_behavior=node.idle_behavior if node else IdleBehavior.RUN,
            instance_type=node.instance_type if node else None,
        )
        if joined != node:
            self._state.save_node(joined)
        live = self._live.setdefault(session.node_id, _Live(self._clock.monotonic()))
        live.session = session
        live.heard = self._clock.monotonic()
        live.instances = {(r.upid, r.round): r.status for r in hello.inventory}
        live.version += 1
        self._healthy.add(session.node_id)  # just heard from
        session.send(
            Welcome(engine.heartbeat_period, self.epoch, self.lease_duration, self.dispatchers)
        )
        log.info(
            "agent %s joined from %s with %d process(es)",
            hello.node_id,
            session.peer,
            len(hello.inventory),
        )
        self.partitions.returned(session.node_id)
        self.syncer.reconcile(session.node_id, list(hello.inventory))
        self._wake_mapper()
        return None

    def agent_batch(self, session: AgentSession, messages: list[Message]) -> None:
        live = self._live.get(session.node_id)
        if live is None or live.session is not session:
            return
        live.heard = self._clock.monotonic()
        reports: list[ProcessReport] = []
        for msg in messages:
            if isinstance(msg, ProcessReport):
                live.instances[(msg.upid, msg.round)] = msg.status
                live.version += 1
                reports.append(msg)
            elif isinstance(msg, LogChunk):
                self._logs.answered(session.node_id, msg)
            elif not isinstance(msg, Heartbeat):
                log.warning("unexpected %s from agent %s", type(msg).__name__, session.node_id)
        if reports:
            self.syncer.reports(session.node_id, reports)

    def agent_left(self, session: AgentSession) -> None:
        live = self._live.get(session.node_id)
        if live is not None and live.session is session:
            live.session = None
            log.info("agent %s disconnected", session.node_id)

    def renewed(self, dispatchers: list[str]) -> None:
        """Tell every agent the lease was renewed (they leave a dispatcher gone silent)."""
        self.dispatchers = dispatchers
        msg = Renewed(self.epoch, dispatchers)
        for live in self._live.values():
            if live.session is not None:
                live.session.send(msg)

    # -- commands ---------------------------------------------------------------

    def send(self, node_id: NodeId, msg: Message) -> None:
        live = self._live.get(node_id)
        if isinstance(msg, Forget) and live is not None:
            live.instances.pop((msg.upid, msg.round), None)
            live.version += 1
        if live is not None and live.session is not None:
            live.session.send(msg)

    def kill(self, node_id: NodeId, upid: Upid, round_: Round) -> None:
        node = self._state.nodes.get(node_id)
        grace = self._engines[node.engine].terminate_grace if node else 10.0
        self.send(node_id, Kill(upid, round_, grace))

    def launch(self, records: Iterable[ProcessRecord]) -> None:
        """Send the launches of committed placements; mark any still ASSIGNED PENDING."""
        now = self._clock.time()
        pending: list[ProcessRecord] = []
        failed: list[ProcessRecord] = []
        for record in records:
            assert record.assigned is not None
            definition = self._state.definitions.get(record.request.definition_id)
            if definition is None:
                failed.append(
                    moved(
                        record,
                        ProcessEvent.FAIL,
                        now,
                        end_reason=f"definition {record.request.definition_id!r} is gone",
                    )
                )
                continue
            executable = definition.executable
            self.send(
                record.assigned,
                Launch(
                    record.upid,
                    record.round,
                    executable.exec,
                    list(executable.argv),
                    dict(executable.env),
                    executable.working_directory,
                    json.dumps(dict(record.request.configuration)),
                ),
            )
            if record.state is ProcessState.ASSIGNED:
                pending.append(moved(record, ProcessEvent.LAUNCH, now))
        if pending or failed:
            self._state.save_processes([*pending, *failed])

    def launch_one(self, record: ProcessRecord) -> None:
        self.launch([record])

    def session(self, node_id: NodeId) -> AgentSession | None:
        live = self._live.get(node_id)
        return live.session if live is not None else None

    def unstarted(self, node_id: NodeId) -> list[ProcessRecord]:
        """The node's PENDING processes its agent has not reported started."""
        live = self._live.get(node_id)
        instances = live.instances if live is not None else {}
        processes = self._state.processes
        return [
            record
            for upid in self._state.by_node.get(node_id, ())
            if (record := processes[upid]).state is ProcessState.PENDING
            and instances.get((upid, record.round), QUEUED) == QUEUED
        ]

    async def read_log(
        self, node_id: NodeId, upid: Upid, stream: str, offset: int, limit: int
    ) -> dict[str, Any]:
        live = self._live.get(node_id)
        if live is None or live.session is None:
            raise Unavailable(f"node {node_id} is not connected; its logs cannot be read now")
        return await self._logs.read(node_id, live.session, upid, stream, offset, limit)

    # -- views ------------------------------------------------------------------

    def used_slots(self, node_id: NodeId) -> int:
        return len(self._state.by_node.get(node_id, ())) + len(self.stale_running(node_id))

    def stale_running(self, node_id: NodeId) -> list[Upid]:
        """Processes whose agent on the node still runs a round the store no longer wants
        there (being killed): they hold a slot, and their node_exclusive tag, until gone."""
        held = self._state.by_node.get(node_id, ())
        live = self._live.get(node_id)
        stale: list[Upid] = []
        if live is not None:
            for (upid, round_), status in live.instances.items():
                if status == RUNNING:
                    record = self._state.processes.get(Upid(upid))
                    if record is None or record.round != round_ or upid not in held:
                        stale.append(Upid(upid))
        return stale

    def view_version(self, node_id: NodeId) -> tuple[int, int]:
        """Changes whenever what the mapper sees of the node may have: its held processes
        or what its agent reported."""
        live = self._live.get(node_id)
        return self._state.held_version.get(node_id, 0), live.version if live else -1

    def accepting(self, node: NodeRecord) -> bool:
        """May the node take new work? Health is read at each tick (every 0.2 s), not at
        each mapper pass: with thousands of nodes, it would be most of a pass."""
        live = self._live.get(node.node_id)
        return (
            node.state in (NodeState.IDLE, NodeState.BUSY)
            and live is not None
            and live.session is not None
            and node.node_id in self._healthy
            and node.idle_behavior.value == "run"
        )

    def health(self, node: NodeRecord) -> Health:
        live = self._live.get(node.node_id)
        heard = live.heard if live is not None else self._started
        engine = self._engines[node.engine]
        return classify_health(
            self._clock.monotonic() - heard, engine.heartbeat_warning, engine.heartbeat_missing
        )

    def booting(self, engine_id: EngineId) -> list[NodeRecord]:
        """The engine's nodes created (or known) whose agent has not joined yet."""
        return [
            n
            for n in self._state.nodes.values()
            if n.engine == engine_id and n.state in (NodeState.BOOTING, NodeState.UNKNOWN)
        ]

    def trouble(self, engine_id: EngineId) -> str | None:
        return self._pool.trouble(engine_id)

    def describe_nodes(self) -> list[dict[str, Any]]:
        return [self.describe(node) for node in self._state.nodes.values()]

    def describe(self, node: NodeRecord) -> dict[str, Any]:
        """A node as the API shows it (also one already forgotten, which is just gone)."""
        used = self.used_slots(node.node_id)
        state = node.state
        if state in (NodeState.IDLE, NodeState.BUSY):
            state = NodeState.BUSY if used else NodeState.IDLE
        live = self._live.get(node.node_id)
        doc = node.as_doc()
        engine = self._engines.get(node.engine)
        kind = engine.instance_type(node.instance_type) if engine is not None else None
        doc.update(
            price=kind.price if kind is not None else None,
            state=state.value,
            health=self.health(node).value,
            used=used,
            connected=bool(live and live.session),
            last_heard=round(self._clock.monotonic() - live.heard, 3) if live else None,
        )
        return doc

    def statistics(self) -> dict[str, Any]:
        return {
            "nodes": len(self._state.nodes),
            "connected": sum(1 for live in self._live.values() if live.session is not None),
        }

    # -- the tick ---------------------------------------------------------------

    async def tick(self) -> None:
        """One pass of the node loop: health, instance sync, then boots."""
        self._ticks += 1
        for node in list(self._state.nodes.values()):
            reason = self._failure(node)
            if reason is not None:
                self.lose(node.node_id, reason)
            elif node.state is not NodeState.BOOTING:
                live = self._live.get(node.node_id)
                session = live.session if live is not None else None
                self.partitions.check(node, self._silent_for(node), session)
        healthy = {n.node_id for n in self._state.nodes.values() if self.health(n) is Health.OK}
        if healthy != self._healthy:
            self._healthy = healthy
            self._wake_mapper()
        if self._ticks % LIST_EVERY == 1:
            await self._sync_instances()
            self._drain_stuck()
        self._plan_pool()

    def _drain_stuck(self) -> None:
        """Drain a node where a process outlives its SIGKILL (stuck in the kernel, say): no
        new work lands beside it, and the node is retired once it is empty."""
        now = self._clock.time()
        for node_id, held in self._state.by_node.items():
            node = self._state.nodes.get(node_id)
            engine = self._engines.get(node.engine) if node is not None else None
            if (
                node is None
                or engine is None
                or node.idle_behavior is not IdleBehavior.RUN
                or node.state is NodeState.DISCONNECTED  # its reports cannot arrive
            ):
                continue
            limit = engine.terminate_grace + engine.heartbeat_missing
            for upid in held:
                record = self._state.processes[upid]
                if record.state is ProcessState.TERMINATING and now - record.updated_at > limit:
                    log.warning(
                        "draining node %s: %s is still running %.0f s after it was told to stop",
                        node_id,
                        upid,
                        now - record.updated_at,
                    )
                    self.set_idle_behavior(node_id, IdleBehavior.DRAIN)
                    break

    def _failure(self, node: NodeRecord) -> str | None:
        engine = self._engines.get(node.engine)
        if engine is None:
            return f"engine {node.engine!r} is no longer configured"
        if node.state is NodeState.BOOTING and self._silent_for(node) >= engine.boot_timeout:
            if self._booted_at.pop(node.node_id, None) is not None:
                self._on_boot(engine.engine_id, "timed_out", None)
            return f"its agent did not join within boot_timeout ({engine.boot_timeout:g} s)"
        return None

    def _silent_for(self, node: NodeRecord) -> float:
        live = self._live.get(node.node_id)
        return self._clock.monotonic() - (live.heard if live else self._started)

    async def _sync_instances(self) -> None:
        instances = await self._pool.instances()
        if instances is None:
            return
        for node in list(self._state.nodes.values()):
            # A node with no instance joined on its own (an agent started by hand): no
            # driver knows it, so only its heartbeats tell whether it is alive.
            booted = node.instance_id is not None
            if booted and node.node_id not in instances and node.state is not NodeState.BOOTING:
                self.lose(node.node_id, "its instance is gone")
        for node_id, instance in instances.items():
            if node_id not in self._state.nodes:
                engine = EngineId(instance.tags.get("corral-engine", ""))
                log.warning("destroying instance %s: no node of this pool claims it", node_id)
                if engine in self._engines:
                    self._spawn(self._pool.destroy(engine, instance.instance_id))

    def _plan_pool(self) -> None:
        now = self._clock.monotonic()
        views = []
        for node in self._state.nodes.values():
            used = self.used_slots(node.node_id)
            if used or node.state not in (NodeState.IDLE, NodeState.BUSY):
                self._unoccupied_since.pop(node.node_id, None)
                idle_for = 0.0
            else:
                idle_for = now - self._unoccupied_since.setdefault(node.node_id, now)
            views.append(
                PoolNode(
                    node.node_id,
                    node.engine,
                    node.state,
                    used,
                    node.idle_behavior,
                    node.created_at,
                    idle_for,
                    self._state.room(node, self._engines.get(node.engine)),
                )
            )
        quota = [e.engine_id for e in self._config.engines if self._pool.quota_reached(e.engine_id)]
        result = plan(self._config.engines, views, self._state.demand.groups(), quota)
        for engine_id, count in result.boot.items():
            engine = self._engines[engine_id]
            kinds = result.boot_types.get(engine_id) or (None,) * count
            for kind in kinds:
                self._boot(engine, engine.instance_type(kind))
        for node_id in result.retire:
            self.retire(node_id)
        if result.boot or result.retire:
            self._wake_mapper()  # waiting reasons name what boots and what is left
        for node in list(self._state.nodes.values()):
            if node.state is NodeState.SHUTTING_DOWN and node.node_id not in self._retiring:
                self.retire(node.node_id)  # left half-retired by a dispatcher that stopped

    def set_idle_behavior(self, node_id: NodeId, behavior: IdleBehavior) -> NodeRecord:
        """Hold, drain or run a node (an operator's order); the planner does the rest."""
        node = self._known(node_id)
        if node.idle_behavior is not behavior:
            node = replace(node, idle_behavior=behavior)
            self._state.save_node(node)
            log.info("node %s set to %s", node_id, behavior.value)
            self._wake_mapper()
        return node

    def kill_node(self, node_id: NodeId) -> NodeRecord:
        """Shut a node down now, busy or not: its processes follow their restart modes."""
        node = self._known(node_id)
        held = [self._state.processes[u] for u in self._state.by_node.get(node_id, ())]
        if held:
            fence = self.partitions.fence_of(node, held)
            self.syncer.lose(held, f"node {node_id} was killed by an operator", fence)
        self.retire(node_id)
        return self._state.nodes.get(node_id, node)

    def _known(self, node_id: NodeId) -> NodeRecord:
        node = self._state.nodes.get(node_id)
        if node is None:
            raise NotFound(f"no node {node_id!r}", field="node_id")
        if node.state is NodeState.SHUTTING_DOWN:
            raise Conflict(f"node {node_id!r} is shutting down", field="node_id")
        return node

    def retire(self, node_id: NodeId) -> None:
        """Shut the node down gracefully: no new work, its agent stopped, its instance gone."""
        node = self._state.nodes.get(node_id)
        if node is None or node_id in self._retiring:
            return
        log.info("retiring node %s", node_id)
        self._retiring.add(node_id)
        committed = self._state.save_node(replace(node, state=NodeState.SHUTTING_DOWN))
        engine = self._engines.get(node.engine)
        grace = engine.terminate_grace if engine else 10.0

        async def shut_down() -> None:
            try:
                await committed
                live = self._live.get(node_id)
                if live is not None and live.session is not None:
                    live.session.send(Shutdown(grace))
                await self._pool.destroy(node.engine, node.instance_id or node_id)
                self._live.pop(node_id, None)
                self._unoccupied_since.pop(node_id, None)
                self._state.delete_node(node_id)
            finally:
                self._retiring.discard(node_id)

        self._spawn(shut_down())

    def _boot(self, engine: Engine, kind: InstanceType | None = None) -> None:
        node_id = NodeId(f"{engine.engine_id}-{secrets.token_hex(4)}")
        record = NodeRecord(
            node_id=node_id,
            engine=engine.engine_id,
            state=NodeState.BOOTING,
            slots=engine.slots,
            labels=dict(engine.labels),
            created_at=self._clock.time(),
            instance_type=kind.name if kind is not None else None,
        )
        self._live[node_id] = _Live(self._clock.monotonic())
        self._booted_at[node_id] = self._clock.monotonic()
        committed = self._state.save_node(record)

        async def boot() -> None:
            # The record is durable before the instance exists, so a crash in between
            # leaves a BOOTING node that times out, never an instance nobody claims.
            await committed
            instance = await self._pool.boot(node_id, engine, kind)
            current = self._state.nodes.get(node_id)
            if instance is None:
                if self._booted_at.pop(node_id, None) is not None:
                    self._on_boot(engine.engine_id, "failed", None)
                if current is not None:
                    self._state.delete_node(node_id)
                    self._live.pop(node_id, None)
            elif current is not None:
                self._state.save_node(replace(current, instance_id=instance.instance_id))

        self._spawn(boot())

    def lose(self, node_id: NodeId, reason: str) -> None:
        """The node is gone: its processes follow their restart modes, its instance goes.

        Its agent may have started or ended rounds just before it went, their reports lost
        with it. The driver is asked first what the agent would have reported, and that is
        taken as heard: a round that ended ends as it did (a batch job that succeeded is not
        run again), and one that started counts as run (a NEVER process is not run twice).
        """
        node = self._state.nodes.get(node_id)
        if node is None:
            return
        log.warning("node %s lost: %s", node_id, reason)
        held = [self._state.processes[u] for u in self._state.by_node.get(node_id, ())]
        live = self._live.pop(node_id, None)
        if live is not None and live.session is not None:
            live.session.close()
        self._state.delete_node(node_id)
        self._spawn(self._lose_once_asked(node, held, f"node {node_id} lost: {reason}"))

    async def _lose_once_asked(self, node: NodeRecord, held: list[ProcessRecord], why: str) -> None:
        instance = node.instance_id or node.node_id
        reports = await self._pool.last_reports(node.engine, instance) if held else None
        if reports:
            self.syncer.reports(node.node_id, reports)
        # What changed meanwhile (a terminate, say, or the reports just taken) stands.
        current = [
            now
            for r in held
            if (now := self._state.processes.get(r.upid)) is not None
            and now.round == r.round
            and now.assigned == node.node_id
            and now.state.holds_slot
        ]
        self.syncer.lose(current, why)
        await self._pool.destroy(node.engine, instance)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
