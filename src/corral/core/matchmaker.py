"""Which waiting process goes to which node slot: a pure function of a Snapshot.

For each process in queue order the matchmaker tries its pinned engine, or every engine
in configuration order (the default engine first), and takes the fitting node that is
already the busiest, so work packs onto busy nodes and idle ones can be retired. A
process that fits nowhere gets the most specific Reason found, and is either left
waiting or rejected, as its queueing mode says.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from corral.core.constraints import Reason, ReasonKind, describe_constraints, unmet_constraint
from corral.core.ids import EngineId, NodeId, Round, Upid
from corral.core.snapshot import EngineView, NodeView, Pending, Snapshot


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


class _Slots:
    """Mutable per-node accounting while one match is computed."""

    __slots__ = ("exclusive", "free", "node", "used")

    def __init__(self, node: NodeView) -> None:
        self.node = node
        self.used = node.used
        self.free = node.slots - node.used
        self.exclusive = set(node.exclusive_tags)


def match(snapshot: Snapshot) -> Match:
    one = _Pass(snapshot)
    if snapshot.fresh is None:
        for pending in snapshot.queue:
            # Nothing can be placed and this one already says why: leave it be.
            if one.free_total > 0 or not pending.has_reason:
                one.serve(pending)
        return one.result()
    # The queue in order while a slot is left; after that, only the fresh processes not yet
    # served: the others already say why they wait, and nothing can change that now.
    served: set[Upid] = set()
    for pending in snapshot.queue:
        if one.free_total <= 0:
            break
        served.add(pending.upid)
        one.serve(pending)
    else:
        return one.result()
    for pending in snapshot.fresh:
        if pending.upid not in served:
            one.serve(pending)
    return one.result()


class _Pass:
    """The accounting of one match: free slots per node and engine, and the decisions."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.engines = {e.engine_id: e for e in snapshot.engines}
        self.order = [e.engine_id for e in snapshot.engines]
        self.by_engine: dict[EngineId, list[_Slots]] = {e: [] for e in self.order}
        for node in snapshot.nodes:
            if node.accepting and node.engine in self.by_engine:
                self.by_engine[node.engine].append(_Slots(node))
        self.free = {
            engine: sum(max(s.free, 0) for s in slots) for engine, slots in self.by_engine.items()
        }
        self.free_total = sum(max(f, 0) for f in self.free.values())
        self.placements: list[Placement] = []
        self.waiting: dict[Upid, Reason] = {}
        self.rejected: dict[Upid, Reason] = {}

    def result(self) -> Match:
        return Match(tuple(self.placements), self.waiting, self.rejected)

    def serve(self, pending: Pending) -> None:
        """Place ``pending`` or record why it waits (or is rejected)."""
        pinned = pending.execution_engine_id
        best: Reason | None = None
        for engine_id in [pinned] if pinned is not None else self.order:
            engine = self.engines.get(engine_id)
            if engine is None:
                best = _better(best, Reason(ReasonKind.UNKNOWN_ENGINE, f"no engine {engine_id!r}"))
                continue
            nodes = self.by_engine[engine_id]
            chosen, reason = _place(pending, engine, nodes, self.free[engine_id])
            if chosen is not None:
                chosen.used += 1
                chosen.free -= 1
                self.free[engine_id] -= 1
                self.free_total -= 1
                if pending.node_exclusive is not None:
                    chosen.exclusive.add(pending.node_exclusive)
                self.placements.append(Placement(pending.upid, pending.round, chosen.node.node_id))
                return
            best = _better(best, reason)
        assert best is not None
        if pending.queueing_mode.may_wait(pending.is_restart):
            self.waiting[pending.upid] = best
        else:
            self.rejected[pending.upid] = _rejection(pending, best)


def _place(
    pending: Pending, engine: EngineView, nodes: list[_Slots], engine_free: int
) -> tuple[_Slots | None, Reason]:
    """The busiest fitting node of one engine, or the reason none fits."""
    if not nodes:
        return None, _no_nodes(engine)
    if engine_free <= 0 and not pending.constraints and pending.node_exclusive is None:
        return None, _no_slot(engine, len(nodes))
    chosen: _Slots | None = None
    matching = exclusive_blocked = 0
    for slots in nodes:
        # compare with None: the unmet key may be "", which the validation lets through
        if pending.constraints and (
            unmet_constraint(pending.constraints, slots.node.properties) is not None
        ):
            continue
        matching += 1
        if pending.node_exclusive is not None and pending.node_exclusive in slots.exclusive:
            exclusive_blocked += 1
            continue
        if slots.free <= 0:
            continue
        if chosen is None or slots.used > chosen.used:
            chosen = slots
    if chosen is not None:
        return chosen, Reason(ReasonKind.SLOTS, "")
    if matching == 0:
        return None, Reason(
            ReasonKind.CONSTRAINTS,
            f"no node of engine {engine.engine_id!r} matches constraints "
            f"{describe_constraints(pending.constraints)}",
        )
    if exclusive_blocked == matching:
        return None, Reason(
            ReasonKind.EXCLUSIVE,
            f"every matching node of engine {engine.engine_id!r} already runs a process "
            f"with node_exclusive {pending.node_exclusive!r}",
        )
    return None, _no_slot(engine, matching)


def _no_nodes(engine: EngineView) -> Reason:
    text = f"no node of engine {engine.engine_id!r} is up"
    if engine.booting:
        text += f"; {engine.booting} booting"
    if engine.trouble:
        text += f"; {engine.trouble}"
    return Reason(ReasonKind.NO_NODES, text)


def _no_slot(engine: EngineView, nodes: int) -> Reason:
    plural = "node has" if nodes == 1 else "nodes have"
    text = (
        f"no free slot: the {nodes} matching {plural} no free slot on engine {engine.engine_id!r}"
    )
    if engine.booting:
        text += f"; {engine.booting} node(s) booting"
    elif engine.maximum_vms and nodes >= engine.maximum_vms:
        text += f"; at maximum_vms ({engine.maximum_vms})"
    if engine.trouble:
        text += f"; {engine.trouble}"
    return Reason(ReasonKind.SLOTS, text)


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
