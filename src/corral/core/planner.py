"""How many nodes each engine should have: a pure function of the pool and the queue.

For each engine::

    need = max(base_need, occupied nodes, ceil((runnable + spare_slots) / slots))

capped by ``maximum_vms``, where *runnable* counts the processes that hold a slot on the
engine's nodes plus the queued ones that would run there. The plan boots the nodes missing
to reach ``need`` and retires surplus nodes, but only nodes that have been unoccupied for
``idle_timeout`` — newest first, so long-lived nodes stay and a burst that ends does not make
the pool flap. Only nodes whose idle behaviour is ``run`` count as capacity; a held node is
kept as it is, and a draining node is retired as soon as it is empty. ``maximum_vms`` caps
every live instance of the engine, whatever its behaviour.

Queued processes pinned to an engine count there; the others count toward the first engine
(in configuration order) whose labels do not rule them out and that has room (free slots,
or nodes it may still boot), the first that fits when none has. Those that fit fewest
engines are counted first, so an engine's room goes to what can run nowhere else.

The queue reaches the planner as groups: the processes that want the same engine, under the
same constraints and with the same resources, are one group and a count (a
:class:`DemandTally`, kept as the queue changes). A plan then costs the kinds of demand, not
the processes: with 100,000 queued it took 50 to 150 ms of the dispatcher's loop every tick.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from corral.core.constraints import unmet_constraint
from corral.core.ids import EngineId, NodeId
from corral.core.model import ConstraintValue, Engine, InstanceType, Resources
from corral.core.node_states import IdleBehavior, NodeState

#: node states that count as an instance of the engine (booked against maximum_vms)
LIVE_STATES = frozenset(
    {
        NodeState.BOOTING,
        NodeState.UNKNOWN,
        NodeState.IDLE,
        NodeState.BUSY,
        NodeState.DISCONNECTED,
    }
)


@dataclass(frozen=True, slots=True)
class PoolNode:
    """A node as the planner sees it."""

    node_id: NodeId
    engine: EngineId
    state: NodeState
    #: processes holding a slot on it
    used: int = 0
    idle_behavior: IdleBehavior = IdleBehavior.RUN
    created_at: float = 0.0
    #: how long it has been unoccupied (0 while it holds a process)
    idle_for: float = 0.0
    #: what is left of its instance type's resources (None: a slots-only node)
    room: Resources | None = None


class Demand(Protocol):
    """A queued process, with only what decides which engine it would run on (a
    ``core.snapshot.Pending`` is one)."""

    @property
    def execution_engine_id(self) -> EngineId | None: ...

    @property
    def constraints(self) -> Mapping[str, ConstraintValue]: ...

    @property
    def resources(self) -> Resources: ...


DemandGroup = tuple[Demand, int]
"""Queued processes alike for the planner: one of them, and how many there are."""


def demand_key(demand: Demand) -> Hashable:
    """What makes two queued processes alike for the planner."""
    constraints = demand.constraints
    frozen = (
        tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in constraints.items()))
        if constraints
        else ()
    )
    return demand.execution_engine_id, frozen, demand.resources


class DemandTally:
    """The queue as the planner reads it, kept as processes enter and leave it."""

    def __init__(self) -> None:
        self._first: dict[Hashable, Demand] = {}
        self._count: Counter[Hashable] = Counter()

    def add(self, demand: Demand) -> None:
        key = demand_key(demand)
        self._first.setdefault(key, demand)
        self._count[key] += 1

    def remove(self, demand: Demand) -> None:
        key = demand_key(demand)
        self._count[key] -= 1
        if self._count[key] <= 0:
            del self._count[key], self._first[key]

    def groups(self) -> list[DemandGroup]:
        return [(self._first[key], count) for key, count in self._count.items()]


@dataclass(frozen=True, slots=True)
class Plan:
    """Nodes to boot per engine, nodes to retire, and each engine's target."""

    boot: dict[EngineId, int]
    retire: tuple[NodeId, ...]
    need: dict[EngineId, int]
    #: for engines with instance types, the type of each node to boot
    boot_types: dict[EngineId, tuple[str, ...]] = field(default_factory=dict)


def plan(
    engines: tuple[Engine, ...],
    nodes: Iterable[PoolNode],
    queued: Iterable[DemandGroup],
    quota_reached: Collection[EngineId] = (),
) -> Plan:
    """The plan for every engine; ``quota_reached`` names the engines whose cloud refuses
    more instances: their idle nodes are shut at once when work waits for another kind of
    node, so the quota goes where it is needed (Arvados does the same)."""
    by_engine: dict[EngineId, list[PoolNode]] = {e.engine_id: [] for e in engines}
    for node in nodes:
        if node.engine in by_engine and node.state in LIVE_STATES:
            by_engine[node.engine].append(node)
    waiting = _attribute(engines, by_engine, queued)
    boot: dict[EngineId, int] = {}
    boot_types: dict[EngineId, tuple[str, ...]] = {}
    retire: list[NodeId] = []
    need: dict[EngineId, int] = {}
    for engine in engines:
        live = by_engine[engine.engine_id]
        # A disconnected node still costs its instance but serves nothing: the work it held
        # may need a node elsewhere, and it is never retired for being idle.
        running = [
            n
            for n in live
            if n.idle_behavior is IdleBehavior.RUN and n.state is not NodeState.DISCONNECTED
        ]
        occupied = sum(1 for n in running if n.used > 0)
        demands = waiting[engine.engine_id]
        queued_here = sum(count for _, count in demands)
        if engine.instance_types:
            kinds = _typed_boots(engine, running, demands, engine.maximum_vms - len(live))
            target = len(running) + len(kinds) if demands else max(engine.base_need, occupied)
            target = min(max(target, engine.base_need), engine.maximum_vms)
            cheapest = engine.instance_types[0]
            kinds += [cheapest] * min(
                engine.base_need - len(running) - len(kinds), engine.maximum_vms - len(live)
            )
            missing = len(kinds)
            if kinds:
                boot_types[engine.engine_id] = tuple(k.name for k in kinds)
        else:
            held = sum(n.used for n in running)
            wanted = -(-(held + queued_here + engine.spare_slots) // engine.slots)
            target = min(max(engine.base_need, occupied, wanted), engine.maximum_vms)
            missing = min(target - len(running), engine.maximum_vms - len(live))
        need[engine.engine_id] = target
        if missing > 0:
            boot[engine.engine_id] = missing
        if engine.engine_id in quota_reached and missing > 0:
            # the idle nodes hold quota that the nodes this work needs cannot get
            retire += _surplus(engine, running, len(running), idle_timeout=0.0)
        else:
            retire += _surplus(engine, running, len(running) - target)
        retire += [
            n.node_id
            for n in live
            if n.idle_behavior is IdleBehavior.DRAIN
            and n.used == 0
            and n.state not in (NodeState.BOOTING, NodeState.DISCONNECTED)
        ]
    return Plan(boot, tuple(retire), need, boot_types)


class _Bin:
    """A node's free slots and room while the planner packs the queue onto it."""

    __slots__ = ("room", "slots")

    def __init__(self, room: Resources, slots: int) -> None:
        self.room = room
        self.slots = slots

    def take(self, needs: Resources) -> bool:
        if self.slots <= 0 or not needs.fits_in(self.room):
            return False
        self.room = self.room - needs
        self.slots -= 1
        return True


def _typed_boots(
    engine: Engine, running: list[PoolNode], demands: list[DemandGroup], room_for: int
) -> list[InstanceType]:
    """Instance types to boot for the queued processes no node has room for.

    Each process goes on the first node with a free slot and room enough: a live one (booting
    ones included), then one planned here; else on a new node of the cheapest type that fits
    it, while ``maximum_vms`` allows. A process no type fits asks for nothing.
    """
    bins = [
        _Bin(n.room, engine.slots - n.used)
        for n in running
        if n.room is not None and n.used < engine.slots
    ]
    new: list[InstanceType] = []
    for demand, count in demands:
        needs = demand.resources
        kind = next((t for t in engine.instance_types if needs.fits_in(t.capacity)), None)
        for _ in range(count):
            if any(bin_.take(needs) for bin_ in bins):
                continue
            if kind is None or len(new) >= room_for:
                break  # bins only fill up: the rest of the group finds no room either
            new.append(kind)
            bins.append(_Bin(kind.capacity - needs, engine.slots - 1))
    return new


def _surplus(
    engine: Engine, running: list[PoolNode], surplus: int, idle_timeout: float | None = None
) -> list[NodeId]:
    """Up to ``surplus`` nodes unoccupied for ``idle_timeout``, newest first."""
    if surplus <= 0:
        return []
    wait = engine.idle_timeout if idle_timeout is None else idle_timeout
    idle = [n for n in running if n.used == 0 and n.state is NodeState.IDLE and n.idle_for >= wait]
    idle.sort(key=lambda n: (n.created_at, n.node_id), reverse=True)
    return [n.node_id for n in idle[:surplus]]


def _attribute(
    engines: tuple[Engine, ...],
    by_engine: Mapping[EngineId, list[PoolNode]],
    queued: Iterable[DemandGroup],
) -> dict[EngineId, list[DemandGroup]]:
    """Queued processes per engine: pinned ones where pinned, the others where they fit."""
    known = {e.engine_id: e for e in engines}
    # free slots of the nodes that take work, and of the nodes the engine may still boot
    room = {
        e.engine_id: sum(
            e.slots - n.used
            for n in by_engine[e.engine_id]
            if n.used < e.slots
            and n.idle_behavior is IdleBehavior.RUN
            and n.state is not NodeState.DISCONNECTED
        )
        + e.slots * max(0, e.maximum_vms - len(by_engine[e.engine_id]))
        for e in engines
    }
    kinds: list[tuple[list[Engine], Demand, int]] = []
    for demand, count in queued:
        if demand.execution_engine_id is not None:
            pinned = known.get(demand.execution_engine_id)
            fitting = [pinned] if pinned is not None else []
        else:
            fitting = [e for e in engines if _may_fit(e, demand.constraints)]
        if fitting:
            kinds.append((fitting, demand, count))
    # The most constrained first, so that an engine's room goes to what can run nowhere else
    # (and the plan does not hang on the order of the queue).
    rank = {e.engine_id: i for i, e in enumerate(engines)}
    kinds.sort(key=lambda kind: (len(kind[0]), [rank[e.engine_id] for e in kind[0]]))
    counts: dict[EngineId, list[DemandGroup]] = {e.engine_id: [] for e in engines}
    for fitting, demand, count in kinds:
        left = count
        # where there is room, as much as it holds; what no engine holds, to the first
        for engine in fitting:
            taken = min(left, max(0, room[engine.engine_id]))
            if taken:
                counts[engine.engine_id].append((demand, taken))
                room[engine.engine_id] -= taken
                left -= taken
        if left:
            counts[fitting[0].engine_id].append((demand, left))
            room[fitting[0].engine_id] -= left
    return counts


def _may_fit(engine: Engine, constraints: Mapping[str, ConstraintValue]) -> bool:
    """False only when the engine's own labels rule the process out (node properties such
    as the hostname are unknown until a node exists)."""
    if not constraints:
        return True
    decided = {k: v for k, v in constraints.items() if k in engine.labels or k == "engine"}
    properties = {**engine.labels, "engine": engine.engine_id}
    return unmet_constraint(decided, properties) is None
