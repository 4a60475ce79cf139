"""Which waiting process goes to which node slot: a pure function of a Snapshot.

For each process in queue order the matchmaker tries its pinned engine, or every engine
in configuration order (the default engine first), and takes the fitting node that is
already the busiest, so work packs onto busy nodes and idle ones can be retired. A
process that fits nowhere gets the most specific Reason found, and is either left
waiting or rejected, as its queueing mode says. Free slots go first to launches queued
ahead on busy nodes (which are withdrawn to take them); once every slot is busy, processes
that need nothing but a slot may be placed ahead on busy nodes (``core._ahead``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from corral.core._ahead import Spots, may_go_ahead
from corral.core._capacity import Engine, Group
from corral.core.constraints import Reason, ReasonKind, describe_constraints
from corral.core.ids import EngineId, NodeId, Round, Upid
from corral.core.snapshot import EngineView, NodeView, Pending, Snapshot

__all__ = ["Match", "Placement", "match", "may_go_ahead"]


@dataclass(frozen=True, slots=True)
class Placement:
    upid: Upid
    round: Round
    node_id: NodeId


@dataclass(frozen=True, slots=True)
class Match:
    placements: tuple[Placement, ...]
    waiting: dict[Upid, Reason] = field(default_factory=dict)
    rejected: dict[Upid, Reason] = field(default_factory=dict)
    #: how many of the launches queued ahead on each engine's busy nodes to take back
    withdraw: dict[EngineId, int] = field(default_factory=dict)


def match(snapshot: Snapshot) -> Match:
    one = _Pass(snapshot)
    one.repay(snapshot.returning)
    _to_free_slots(one, snapshot)
    plain = snapshot.plain
    one.go_ahead(filter(may_go_ahead, snapshot.queue) if plain is None else plain)
    return one.result()


def _to_free_slots(one: _Pass, snapshot: Snapshot) -> None:
    served = {p.upid for p in snapshot.returning}
    queue = snapshot.queue
    if served:
        queue = (p for p in queue if p.upid not in served)
    if snapshot.fresh is None:
        for pending in queue:
            # Nothing can be placed and this one already says why: leave it be.
            if one.free_total > 0 or not pending.has_reason:
                one.serve(pending)
        return
    # The queue in order while a slot is left; after that, only the fresh processes not yet
    # served: the others already say why they wait, and nothing can change that now.
    for pending in queue:
        if one.free_total <= 0:
            break
        served.add(pending.upid)
        one.serve(pending)
    else:
        return
    for pending in snapshot.fresh:
        if pending.upid not in served:
            one.serve(pending)


class _Pass:
    """The accounting of one match: free slots per engine, and the decisions."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.order = [e.engine_id for e in snapshot.engines]
        nodes: dict[EngineId, list[NodeView]] = {e: [] for e in self.order}
        for node in snapshot.nodes:
            if node.accepting and node.engine in nodes:
                nodes[node.engine].append(node)
        self.engines: dict[EngineId, Engine] = {}
        first = 0
        for view in snapshot.engines:
            self.engines[view.engine_id] = Engine(view, nodes[view.engine_id], first)
            first += len(nodes[view.engine_id])
        self.placements: list[Placement] = []
        self.waiting: dict[Upid, Reason] = {}
        self.rejected: dict[Upid, Reason] = {}
        self.withdrawn: dict[EngineId, int] = {}
        #: engines whose free slots go first to launches queued ahead on their nodes
        self.owing: set[EngineId] = set()
        self.free_total = sum(e.free for e in self.engines.values())
        self._no_slot: dict[tuple[EngineId, int], Reason] = {}

    def repay(self, returning: Iterable[Pending]) -> None:
        """Launches queued ahead were placed before anything still in the queue, so free
        slots are theirs first: place those withdrawn and back in the queue, then book free
        slots for those still queued on busy nodes, and withdraw them."""
        for pending in returning:
            self.serve(pending)
        for engine_id, engine in self.engines.items():
            self._book(engine_id, engine)
        self.free_total = sum(e.free for e in self.engines.values())

    def _book(self, engine_id: EngineId, engine: Engine) -> None:
        if engine.free <= 0:
            return
        queued = sum(v.queued for v in engine.views)
        withdrawing = sum(v.withdrawing for v in engine.views)
        if queued + withdrawing <= 0:
            return
        self.owing.add(engine_id)
        booked = engine.reserve(queued + withdrawing)
        if booked > withdrawing:
            self.withdrawn[engine_id] = booked - withdrawing

    def result(self) -> Match:
        return Match(tuple(self.placements), self.waiting, self.rejected, self.withdrawn)

    def go_ahead(self, plain: Iterable[Pending]) -> None:
        """Place processes that need nothing but a slot on busy nodes, in queue order, while
        their engines have no free slot and spots are left."""
        spots = {
            engine_id: Spots(engine.views)
            for engine_id, engine in self.engines.items()
            if engine.free <= 0
            and engine_id not in self.owing
            and any(v.ahead > 0 for v in engine.views)
        }
        left = sum(s.left for s in spots.values())
        if left <= 0:
            return
        placed = {p.upid for p in self.placements}
        for pending in plain:
            if pending.upid in placed:
                continue
            pinned = pending.execution_engine_id
            order = [pinned] if pinned is not None else self.order
            # a free slot on any engine it may use wins over a spot ahead
            if any(e in self.engines and self.engines[e].free > 0 for e in order):
                continue
            chosen = next((spots[e] for e in order if e in spots and spots[e].left > 0), None)
            if chosen is None:
                continue
            node = chosen.take()
            self.placements.append(Placement(pending.upid, pending.round, node.node_id))
            self.waiting.pop(pending.upid, None)
            left -= 1
            if left <= 0:
                return

    def serve(self, pending: Pending) -> None:
        """Place ``pending`` or record why it waits (or is rejected)."""
        pinned = pending.execution_engine_id
        best: Reason | None = None
        for engine_id in [pinned] if pinned is not None else self.order:
            engine = self.engines.get(engine_id)
            if engine is None:
                best = _better(best, Reason(ReasonKind.UNKNOWN_ENGINE, f"no engine {engine_id!r}"))
                continue
            if not engine.views:
                best = _better(best, _no_nodes(engine.view))
                continue
            group = engine.group(pending)
            chosen = group.busiest(pending.node_exclusive, pending.resources)
            if chosen is not None:
                engine.place(chosen, pending.node_exclusive, pending.resources)
                self.free_total -= 1
                self.placements.append(Placement(pending.upid, pending.round, chosen.node.node_id))
                return
            best = _better(best, self._why(engine, group, pending))
        assert best is not None
        if pending.queueing_mode.may_wait(pending.is_restart):
            self.waiting[pending.upid] = best
        else:
            self.rejected[pending.upid] = _rejection(pending, best)

    def _why(self, engine: Engine, group: Group, pending: Pending) -> Reason:
        view = engine.view
        matching = group.matching
        if matching == 0:
            return Reason(
                ReasonKind.CONSTRAINTS,
                f"no node of engine {view.engine_id!r} matches constraints "
                f"{describe_constraints(pending.constraints)}",
            )
        tag = pending.node_exclusive
        if tag is not None and group.blocked(tag) == matching:
            return Reason(
                ReasonKind.EXCLUSIVE,
                f"every matching node of engine {view.engine_id!r} already runs a process "
                f"with node_exclusive {pending.node_exclusive!r}",
            )
        if pending.resources and group.levels:
            # a slot is free, but not with room enough beside it
            return Reason(
                ReasonKind.RESOURCES,
                f"no node of engine {view.engine_id!r} has {pending.resources.describe()} free",
            )
        # One sentence per engine and count, shared by every process it applies to.
        key = (view.engine_id, matching)
        reason = self._no_slot.get(key)
        if reason is None:
            reason = self._no_slot[key] = _no_slot(view, matching)
        return reason


def _no_nodes(engine: EngineView) -> Reason:
    text = f"no node of engine {engine.engine_id!r} is up"
    if engine.booting:
        text += f"; {engine.booting} booting{_of_types(engine)}"
    if engine.trouble:
        text += f"; {engine.trouble}"
    return Reason(ReasonKind.NO_NODES, text)


def _no_slot(engine: EngineView, nodes: int) -> Reason:
    plural = "node has" if nodes == 1 else "nodes have"
    text = (
        f"no free slot: the {nodes} matching {plural} no free slot on engine {engine.engine_id!r}"
    )
    if engine.booting:
        text += f"; {engine.booting} node(s) booting{_of_types(engine)}"
    elif engine.maximum_vms and nodes >= engine.maximum_vms:
        text += f"; at maximum_vms ({engine.maximum_vms})"
    if engine.trouble:
        text += f"; {engine.trouble}"
    return Reason(ReasonKind.SLOTS, text)


def _of_types(engine: EngineView) -> str:
    """`` (waiting for a node of type large to boot)``, when the types are known."""
    if not engine.booting_types:
        return ""
    return f" (waiting for a node of type {' or '.join(engine.booting_types)} to boot)"


def _better(current: Reason | None, candidate: Reason) -> Reason:
    """Keep the most specific reason: it tells the user what to change."""
    if current is None or candidate.kind.value > current.kind.value:
        return candidate
    return current


def _rejection(pending: Pending, reason: Reason) -> Reason:
    when = "a restart" if pending.is_restart else "a first start"
    return Reason(
        reason.kind,
        f"{reason.message}; queueing_mode {pending.queueing_mode.value} does not let {when} wait",
    )
