"""The mapper loop: queued processes → node slots, through the pure matchmaker.

Woken by anything that may free or need a slot (a schedule, an exit, a node joining), it
promotes delayed restarts that are due, takes a snapshot, asks ``core.matchmaker.match``
for a plan, and applies it: placements are committed (ASSIGNED, then PENDING, in one
transaction) and only then launched; processes that must wait get their reason; those their
queueing mode forbids to wait are REJECTED. Launches queued ahead on busy nodes that a free
slot could now take are withdrawn from their agents.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging

from corral.clock import Clock
from corral.config import Config
from corral.core.ids import NodeId, Round, Upid
from corral.core.matchmaker import Match, match
from corral.core.model import NodeRecord, ProcessRecord, evolved
from corral.core.process_states import ProcessEvent, ProcessState
from corral.core.snapshot import EngineView, NodeView, Snapshot
from corral.dispatcher.nodes import Nodes
from corral.dispatcher.rounds import assigned, moved
from corral.dispatcher.state import State
from corral.dispatcher.withdrawals import Withdrawals

log = logging.getLogger("corral.mapper")


class Mapper:
    def __init__(self, state: State, config: Config, clock: Clock, nodes: Nodes) -> None:
        self._state = state
        self._config = config
        self._engines = {e.engine_id: e for e in config.engines}
        self._clock = clock
        self._nodes = nodes
        self._wake = asyncio.Event()
        self._shape: tuple[object, ...] = ()
        self._views: dict[NodeId, tuple[NodeRecord, tuple[int, int, int], NodeView]] = {}
        self._withdrawals = Withdrawals(state, nodes, self.wake)
        #: some node held launches ahead at the last pass (or nobody looked yet)
        self._ahead = True

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            timeout = self._until_next_restart()
            if timeout is None:
                await self._wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            try:
                self.pass_once()
            except Exception:
                log.exception("mapper pass failed")

    def _until_next_restart(self) -> float | None:
        if not self._state.delayed:
            return None
        return max(0.0, self._state.delayed[0][0] - self._clock.time())

    def pass_once(self) -> None:
        self._promote_due_restarts()
        if not self._state.queue and not self._ahead:
            return
        snapshot = self.snapshot()
        result = match(snapshot)
        for engine_id, count in result.withdraw.items():
            busy = [v for v in snapshot.nodes if v.engine == engine_id and v.queued > 0]
            self._withdrawals.ask(count, busy)
        self._apply(result)

    def _promote_due_restarts(self) -> None:
        now = self._clock.time()
        due: list[ProcessRecord] = []
        delayed = self._state.delayed
        while delayed and delayed[0][0] <= now:
            _, upid, round_ = heapq.heappop(delayed)
            record = self._state.processes.get(upid)
            if (
                record
                and record.round == round_
                and record.state is ProcessState.UNSCHEDULED_PENDING
            ):
                due.append(
                    moved(
                        record,
                        ProcessEvent.RESTART_DUE,
                        now,
                        not_before=None,
                        waiting_reason="restart due",
                    )
                )
        if due:
            self._state.save_processes(due)

    def snapshot(self) -> Snapshot:
        engines = []
        for e in self._config.engines:
            booting = self._nodes.booting(e.engine_id)
            types = sorted({n.instance_type for n in booting if n.instance_type is not None})
            engines.append(
                EngineView(
                    e.engine_id,
                    len(booting),
                    e.maximum_vms,
                    self._nodes.trouble(e.engine_id),
                    tuple(types),
                )
            )
        views = []
        cache: dict[NodeId, tuple[NodeRecord, tuple[int, int, int], NodeView]] = {}
        returning = self._withdrawals.returning()
        ahead = False
        for node in self._state.nodes.values():
            if not self._nodes.accepting(node):
                continue
            asked = self._withdrawals.asked(node.node_id)
            version = (*self._nodes.view_version(node.node_id), asked)
            cached = self._views.get(node.node_id)
            if cached is not None and cached[0] is node and cached[1] == version:
                view = cached[2]
            else:
                view = self._view(node, asked)
            cache[node.node_id] = (node, version, view)
            views.append(view)
            ahead = ahead or view.used > view.slots
        # With thousands of nodes, building their views is most of a pass: a node's view
        # is built again only when its record, its processes or its agent's reports change.
        self._views = cache
        self._ahead = ahead
        # When nodes come, go or start booting, every waiting reason may be stale: this pass
        # reads the whole queue. Otherwise only the processes without a reason yet.
        shape = (tuple(engines), tuple(v.node_id for v in views))
        fresh = self._state.queue if shape != self._shape else self._state.fresh
        self._shape = shape
        # Live views, not copies: match() reads them synchronously, often only a prefix.
        return Snapshot(
            tuple(engines),
            tuple(views),
            self._state.queue.values(),
            fresh.values(),
            self._state.plain.values(),
            returning,
        )

    def _view(self, node: NodeRecord, asked: int) -> NodeView:
        processes = self._state.processes
        held = [processes[u].request for u in self._state.by_node.get(node.node_id, ())]
        # A stale round still running there (a node back from a partition, its old copies
        # being killed) keeps its node_exclusive tag until its agent reports it gone.
        stale = self._nodes.stale_running(node.node_id)
        held += [processes[u].request for u in stale if u in processes]
        engine = self._engines.get(node.engine)
        used = self._nodes.used_slots(node.node_id)
        # beyond its slots: launches its agent queues (or will), unless being withdrawn
        queued = min(used - node.slots, len(self._nodes.unstarted(node.node_id))) - asked
        return NodeView(
            node.node_id,
            node.engine,
            node.properties(),
            node.slots,
            used,
            frozenset(r.node_exclusive for r in held if r.node_exclusive is not None),
            room=self._state.room(node, engine),
            ahead=engine.ahead if engine is not None else 0,
            queued=max(0, queued),
            withdrawing=asked,
        )

    def _apply(self, result: Match) -> None:
        now = self._clock.time()
        processes = self._state.processes
        changed: list[ProcessRecord] = []
        placed: list[tuple[Upid, Round]] = []
        for placement in result.placements:
            node = self._state.nodes[placement.node_id]
            record = assigned(
                processes[placement.upid], node.node_id, node.hostname, node.engine, now
            )
            # Launched in the same commit as assigned: a restart treats ASSIGNED and PENDING
            # alike (the launch is sent again), so the extra state costs no transaction.
            changed += [record, moved(record, ProcessEvent.LAUNCH, now)]
            placed.append((record.upid, record.round))
            self._ahead = True  # it may have gone ahead: the next pass looks
        for upid, reason in result.waiting.items():
            record = processes[upid]
            if record.state is not ProcessState.WAITING:
                changed.append(moved(record, ProcessEvent.WAIT, now, waiting_reason=reason.message))
            elif record.waiting_reason != reason.message:
                changed.append(evolved(record, waiting_reason=reason.message, updated_at=now))
        for upid, reason in result.rejected.items():
            changed.append(
                moved(processes[upid], ProcessEvent.REJECT, now, end_reason=reason.message)
            )
        if not changed:
            return
        committed = self._state.save_processes(changed)
        if placed:
            committed.add_done_callback(lambda f: self._launch(f, placed))

    def _launch(self, committed: asyncio.Future[None], placed: list[tuple[Upid, Round]]) -> None:
        if committed.cancelled() or committed.exception() is not None:
            return
        ready = []
        unlaunched = []
        now = self._clock.time()
        for upid, round_ in placed:
            record = self._state.processes.get(upid)
            if record is None or record.round != round_:
                continue  # restarted or lost meanwhile: that placement is void
            if record.state is ProcessState.PENDING:
                ready.append(record)
            elif record.state is ProcessState.TERMINATING:
                # Terminated while its placement was being committed: its Kill reached an
                # agent that never had it, and its launch will never be sent.
                unlaunched.append(
                    moved(
                        record, ProcessEvent.TERMINATED, now, end_reason="terminated before it ran"
                    )
                )
        if unlaunched:
            self._state.save_processes(unlaunched)
        if ready:
            self._nodes.launch(ready)
