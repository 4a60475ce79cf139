"""Launch-ahead: placements on nodes whose every slot is busy, and taking them back.

When no node of an engine has a free slot, a process that needs nothing but a slot (no
constraints, no ``node_exclusive`` tag, no resources) and whose queueing mode always lets
it wait may still be placed on one of its nodes, up to the node's ``ahead`` beyond its
slots: the agent queues the launch and starts it itself the moment a slot frees, so the
dispatcher's round trip leaves the time between two processes. Such a spot is not a free
slot: a process that may not wait is rejected as before. A free slot always wins, at
placement and after it: launches queued ahead were placed before anything still in the
dispatcher's queue, so an engine's free slots are booked for them first and they are
withdrawn from their agents, oldest first, to be placed there (served before the queue
when they come back).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from corral.core.process_states import QueueingMode
from corral.core.snapshot import NodeView, Pending


def may_go_ahead(pending: Pending) -> bool:
    """Does ``pending`` need nothing but a slot, and may it always wait?"""
    return (
        not pending.constraints
        and pending.node_exclusive is None
        and not pending.resources
        and pending.queueing_mode is QueueingMode.ALWAYS
    )


class Spots:
    """The launch-ahead spots left on one engine's nodes during a match."""

    __slots__ = ("_heap", "left")

    def __init__(self, nodes: Iterable[NodeView]) -> None:
        # the node with the most spots left first: its queue is the shortest
        self._heap: list[tuple[int, int, NodeView]] = []
        for i, node in enumerate(nodes):
            spots = _spots(node)
            if spots > 0:
                self._heap.append((-spots, i, node))
        heapq.heapify(self._heap)
        self.left = -sum(entry[0] for entry in self._heap)

    def take(self) -> NodeView:
        """Book a spot on the node with the shortest queue (``left`` must be > 0)."""
        negative, i, node = self._heap[0]
        if negative == -1:
            heapq.heappop(self._heap)
        else:
            heapq.heapreplace(self._heap, (negative + 1, i, node))
        self.left -= 1
        return node


def _spots(node: NodeView) -> int:
    if node.slots <= 0 or node.ahead <= 0:
        return 0  # a node without slots frees none: what it queued would never start
    return max(0, node.slots + node.ahead - max(node.used, node.slots))
