"""The dispatcher's live tables: a write-through mirror of the store.

Every change goes through ``save_*``: the in-memory record changes at once (so the loops
see it), the store commits it in the next group commit, and only then are waiters,
event streams and subscribers told. Readers (the API, the dashboard) are shown what the
store holds (``stored``): never a change a crash could still take back. Commands to agents
are sent from a commit's callback, so an agent never acts on a decision the store could
lose. Each change of a process's state also adds a step to its ``history``, in the same
transaction; the ``audit`` log's entries commit with the changes they record.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from corral.core.ids import DefinitionId, NodeId, Round, Upid
from corral.core.matchmaker import may_go_ahead
from corral.core.model import Definition, Engine, NodeRecord, ProcessRecord, Resources
from corral.core.planner import DemandTally
from corral.core.process_states import MATCHABLE_STATES, ProcessState, QueueingMode
from corral.core.snapshot import Pending
from corral.dispatcher.audit import AuditLog
from corral.dispatcher.history import History
from corral.store import Change, Delete, GroupCommitter, Loaded, Put, Table

log = logging.getLogger("corral.dispatcher")


@dataclass(frozen=True, slots=True)
class Change_:
    """A committed process change, as event listeners see it."""

    previous: ProcessRecord | None
    record: ProcessRecord


Listener = Callable[[list[Change_]], None]


class State:
    def __init__(
        self, committer: GroupCommitter, on_fatal: Callable[[BaseException], None]
    ) -> None:
        self._committer = committer
        self._on_fatal = on_fatal
        self.definitions: dict[DefinitionId, Definition] = {}
        self.processes: dict[Upid, ProcessRecord] = {}
        #: how many processes are in each state, kept as they change (read by every dump
        #: and metrics scrape, which must not walk a store of 100,000 processes)
        self.by_state: Counter[ProcessState] = Counter()
        self.nodes: dict[NodeId, NodeRecord] = {}
        #: matchable processes in the order they are served (dicts keep insertion order)
        self.queue: dict[Upid, Pending] = {}
        #: the queue as the pool planner reads it: alike processes counted together
        self.demand = DemandTally()
        #: those of the queue that have no waiting reason yet
        self.fresh: dict[Upid, Pending] = {}
        #: those of the queue that may be placed ahead on a busy node
        self.plain: dict[Upid, Pending] = {}
        #: processes holding a slot, per node
        self.by_node: dict[NodeId, set[Upid]] = {}
        #: bumped whenever a node's by_node set changes (views of the node are then stale)
        self.held_version: dict[NodeId, int] = {}
        #: delayed restarts: (not_before, upid, round)
        self.delayed: list[tuple[float, Upid, Round]] = []
        #: ended processes with the time they ended, oldest end first (the retention's order)
        self.ended: dict[Upid, float] = {}
        self._last_commit: dict[Upid, asyncio.Future[None]] = {}
        #: of the processes whose latest change is not committed yet, what the store holds
        #: (None: nothing yet); kept from the first such change until they are settled
        self._stored: dict[Upid, ProcessRecord | None] = {}
        self._listeners: list[Listener] = []
        #: each process's last state changes, with their times
        self.history = History()
        #: who did what; entries commit with the changes of the same loop turn
        self.audit = AuditLog(self._commit)

    @staticmethod
    def convert(table: Table, doc: dict[str, Any]) -> Any:
        """The record a stored document stands for (``Store.load``'s converter)."""
        if table is Table.PROCESSES:
            return ProcessRecord.from_doc(doc)
        if table is Table.DEFINITIONS:
            return Definition.from_doc(doc)
        if table is Table.NODES:
            return NodeRecord.from_doc(doc)
        return doc

    def load(self, loaded: Loaded) -> None:
        """Fill the tables from a store loaded with :meth:`convert`."""
        for definition in loaded.tables[Table.DEFINITIONS].values():
            self.definitions[definition.definition_id] = definition
        for node in loaded.tables[Table.NODES].values():
            self.nodes[node.node_id] = node
        records: list[ProcessRecord] = list(loaded.tables[Table.PROCESSES].values())
        records.sort(key=lambda r: r.updated_at)
        for record in records:
            self._index(None, record)
        self.history.load(loaded.tables[Table.HISTORY])
        self.audit.load(loaded.tables[Table.AUDIT])

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # -- writes ---------------------------------------------------------------

    def save_processes(self, records: Iterable[ProcessRecord]) -> asyncio.Future[None]:
        """Index ``records`` in order (several steps of one process may come at once: each
        is an event and a history step) and commit each process's last one."""
        latest: dict[Upid, ProcessRecord] = {}
        steps: list[Change] = []
        events: list[Change_] = []
        for record in records:
            previous = self.processes.get(record.upid)
            if record.upid not in self._last_commit and record.upid not in self._stored:
                self._stored[record.upid] = previous  # settled: what the store holds
            self._index(previous, record)
            latest[record.upid] = record
            if previous is None or (previous.round, previous.state) != (record.round, record.state):
                events.append(Change_(previous, record))
                steps.extend(self.history.noted(record))
        changes: list[Change] = [
            Put(Table.PROCESSES, upid, record.as_doc()) for upid, record in latest.items()
        ]
        future = self._commit(changes + steps, events, list(latest))
        for upid in latest:
            self._last_commit[upid] = future
        return future

    def save_definition(self, definition: Definition) -> asyncio.Future[None]:
        self.definitions[definition.definition_id] = definition
        return self._commit([Put(Table.DEFINITIONS, definition.definition_id, definition.as_doc())])

    def delete_definition(self, definition_id: DefinitionId) -> asyncio.Future[None]:
        self.definitions.pop(definition_id, None)
        return self._commit([Delete(Table.DEFINITIONS, definition_id)])

    def save_node(self, node: NodeRecord) -> asyncio.Future[None]:
        self.nodes[node.node_id] = node
        return self._commit([Put(Table.NODES, node.node_id, node.as_doc())])

    def delete_node(self, node_id: NodeId) -> asyncio.Future[None]:
        self.nodes.pop(node_id, None)
        self.by_node.pop(node_id, None)
        return self._commit([Delete(Table.NODES, node_id)])

    def forget_processes(self, upids: Iterable[Upid]) -> tuple[int, asyncio.Future[None]]:
        """Remove ended processes, with their histories, in one transaction; how many went,
        and the commit.

        A process that is no longer ended, or whose last change is not yet committed, is
        left alone: only what the store already holds as ended goes.
        """
        changes: list[Change] = []
        gone = 0
        for upid in upids:
            record = self.processes.get(upid)
            if record is None or not record.state.is_terminal or not self.settled(upid):
                continue
            del self.processes[upid]
            self.by_state[record.state] -= 1
            del self.ended[upid]
            changes.append(Delete(Table.PROCESSES, upid))
            changes.extend(self.history.forget(upid))
            gone += 1
        return gone, self._commit(changes)

    def room(self, node: NodeRecord, engine: Engine | None) -> Resources | None:
        """What is left of the node's instance type (None: a slots-only node)."""
        kind = engine.instance_type(node.instance_type) if engine is not None else None
        if kind is None:
            return None
        room = kind.capacity
        for upid in self.by_node.get(node.node_id, ()):
            room = room - self.processes[upid].request.resources
        return room

    async def flush(self) -> None:
        """Return once every change saved so far is committed."""
        await asyncio.shield(self._committer.commit_nowait([]))

    def flushed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once every change saved so far is committed."""
        self._committer.commit_nowait([]).add_done_callback(lambda _: callback())

    def stored(self, upid: Upid) -> ProcessRecord | None:
        """The process as the store holds it (None: it holds none). While a change is in
        flight that is the record from before it, a commit behind at most."""
        stored = self._stored
        return stored[upid] if upid in stored else self.processes.get(upid)

    def stored_counts(self) -> Counter[ProcessState]:
        """How many processes the store holds in each state (see :meth:`stored`): the
        running counts, corrected for the few changes in flight."""
        counts = self.by_state.copy()
        for upid, held in self._stored.items():
            counts[self.processes[upid].state] -= 1
            if held is not None:
                counts[held.state] += 1
        return +counts

    def stored_processes(self) -> Iterator[ProcessRecord]:
        """Every process the store holds, as it holds it (see :meth:`stored`)."""
        stored = self._stored
        for upid, record in self.processes.items():
            if upid not in stored:
                yield record
            elif (held := stored[upid]) is not None:
                yield held

    def settled(self, upid: Upid) -> bool:
        """Is the latest change to ``upid`` committed, and were its commit's callbacks (the
        commands it sends to agents) run?"""
        return upid not in self._last_commit

    async def durable(self, upid: Upid) -> None:
        """Return once the latest change to ``upid`` is committed."""
        future = self._last_commit.get(upid)
        if future is not None and not future.done():
            await asyncio.shield(future)

    # -- internals ------------------------------------------------------------

    def _commit(
        self,
        changes: list[Change],
        events: list[Change_] | None = None,
        upids: list[Upid] | None = None,
    ) -> asyncio.Future[None]:
        """Commit ``changes``; then tell the listeners of ``events``, and count the processes
        ``upids`` settled unless a later change of theirs is in flight."""
        future = self._committer.commit_nowait(changes)
        future.add_done_callback(lambda f: self._committed(f, events or [], upids or []))
        return future

    def _committed(
        self, future: asyncio.Future[None], events: list[Change_], upids: list[Upid]
    ) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            # Memory is now ahead of the store; the only safe move is to stop and let a
            # restart reload the truth.
            self._on_fatal(error)
            return
        for upid in upids:
            if self._last_commit.get(upid) is future:
                del self._last_commit[upid]
                self._stored.pop(upid, None)
        if events:
            for listener in self._listeners:
                try:
                    listener(events)
                except Exception:
                    log.exception("a state-change listener failed")

    def _bump(self, node_id: NodeId) -> None:
        self.held_version[node_id] = self.held_version.get(node_id, 0) + 1

    def _index(self, previous: ProcessRecord | None, record: ProcessRecord) -> None:
        upid = record.upid
        self.processes[upid] = record
        if previous is not None:
            self.by_state[previous.state] -= 1
        self.by_state[record.state] += 1
        if (
            previous is not None
            and previous.assigned is not None
            and (previous.assigned != record.assigned or not record.state.holds_slot)
        ):
            held = self.by_node.get(previous.assigned)
            if held is not None and upid in held:
                held.discard(upid)
                self._bump(previous.assigned)
        if record.state.holds_slot and record.assigned is not None:
            held = self.by_node.setdefault(record.assigned, set())
            if upid not in held:
                held.add(upid)
                self._bump(record.assigned)
        self._index_queue(record)
        if record.state is ProcessState.UNSCHEDULED_PENDING and record.not_before is not None:
            heapq.heappush(self.delayed, (record.not_before, upid, record.round))
        if not record.state.is_terminal:
            self.ended.pop(upid, None)
        elif upid not in self.ended:
            self.ended[upid] = record.updated_at  # by this dispatcher's clock, as is now

    def _index_queue(self, record: ProcessRecord) -> None:
        upid = record.upid
        if record.state in MATCHABLE_STATES:
            old = self.queue.get(upid)
            pending = _pending(
                record, restart=old is not None and old.round == record.round and old.is_restart
            )
            if old is None:
                # A queued process's request is fixed (schedule refuses other parameters),
                # so its group in the tally is too: only entering the queue counts.
                self.demand.add(pending)
            self.queue[upid] = pending
            if pending.has_reason:
                self.fresh.pop(upid, None)
            else:
                self.fresh[upid] = pending
            if may_go_ahead(pending):
                self.plain[upid] = pending
        else:
            old = self.queue.pop(upid, None)
            if old is not None:
                self.demand.remove(old)
            self.fresh.pop(upid, None)
            self.plain.pop(upid, None)


def _pending(record: ProcessRecord, restart: bool) -> Pending:
    request = record.request
    return Pending(
        upid=record.upid,
        round=record.round,
        constraints=request.constraints,
        execution_engine_id=request.execution_engine_id,
        node_exclusive=request.node_exclusive,
        queueing_mode=request.queueing_mode,
        # A loaded WAITING process was let wait, so its mode allows waiting: a
        # RESTART_ONLY one can only have been waiting on a restart.
        is_restart=restart
        or record.state is ProcessState.DIED_REQUESTED
        or (
            record.state is ProcessState.WAITING
            and request.queueing_mode is QueueingMode.RESTART_ONLY
        ),
        has_reason=record.state is ProcessState.WAITING,
        resources=request.resources,
    )
