"""Launches queued ahead on busy nodes that the mapper asks back from their agents.

When an engine has a free slot and launches wait in the queues of its busy nodes
(``launch_ahead``), the matchmaker books the slot for them and says how many to take back.
This module picks which (the oldest: they were placed first), sends
``Withdraw``, remembers what it asked until the answer shows in the store (the process
started after all, or went back to the queue in a new round), and hands the mapper those
that came back, to be served before the queue: they were placed before anything in it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from corral.core.ids import NodeId, Round, Upid
from corral.core.model import ProcessRecord
from corral.core.process_states import ProcessState
from corral.core.snapshot import NodeView, Pending
from corral.dispatcher.nodes import Nodes
from corral.dispatcher.state import State
from corral.wire.messages import Withdraw


class Withdrawals:
    def __init__(self, state: State, nodes: Nodes, wake_mapper: Callable[[], None]) -> None:
        self._state = state
        self._nodes = nodes
        self._wake_mapper = wake_mapper
        #: per node, the rounds asked back, and the agent connection that was asked: a new
        #: connection's Hello tells what the agent still holds, so those asks are void
        self._asked: dict[NodeId, tuple[object, dict[Upid, Round]]] = {}
        #: withdrawn processes back in the queue, in the order they came back
        self._returning: dict[Upid, None] = {}

    def asked(self, node_id: NodeId) -> int:
        """Launches asked back from the node and not yet answered."""
        entry = self._asked.get(node_id)
        return len(entry[1]) if entry is not None else 0

    def ask(self, count: int, busy: Iterable[NodeView]) -> None:
        """Ask back ``count`` of the launches queued on the ``busy`` nodes, oldest first
        (the launches a node queues are its newest unstarted ones)."""
        queued: list[tuple[ProcessRecord, NodeId]] = []
        for view in busy:
            asked = self._asked.get(view.node_id, (None, {}))[1]
            unstarted = [r for r in self._nodes.unstarted(view.node_id) if r.upid not in asked]
            unstarted.sort(key=lambda r: r.updated_at, reverse=True)
            queued += [(r, view.node_id) for r in unstarted[: view.queued]]
        queued.sort(key=lambda entry: entry[0].updated_at)
        unsettled = False
        for record, node_id in queued[:count]:
            session = self._nodes.session(node_id)
            if session is None:
                continue
            if not self._state.settled(record.upid):
                # its launch leaves when its placement's commit does: no Withdraw before it
                unsettled = True
                continue
            entry = self._asked.setdefault(node_id, (session, {}))
            entry[1][record.upid] = record.round
            session.send(Withdraw(record.upid, record.round))
        if unsettled:
            self._state.flushed(self._wake_mapper)

    def returning(self) -> tuple[Pending, ...]:
        """Withdrawn processes back in the queue; forgets the asks that were answered."""
        processes = self._state.processes
        queue = self._state.queue
        for node_id, (session, asked) in list(self._asked.items()):
            if self._nodes.session(node_id) is not session:
                asked.clear()
            for upid, round_ in list(asked.items()):
                record = processes.get(upid)
                if record is None or record.round != round_ or record.assigned != node_id:
                    del asked[upid]
                    if upid in queue:
                        self._returning[upid] = None
                elif record.state is not ProcessState.PENDING:
                    del asked[upid]
            if not asked:
                del self._asked[node_id]
        for upid in [u for u in self._returning if u not in queue]:
            del self._returning[upid]
        return tuple(queue[u] for u in self._returning)
