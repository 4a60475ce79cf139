"""The planner: need = max(base_need, occupied, ceil((runnable + spare) / slots)), capped by
maximum_vms; surplus nodes retire newest first, only after idle_timeout."""

from __future__ import annotations

from collections.abc import Iterable

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.core.ids import EngineId, NodeId
from corral.core.model import Engine, InstanceType, Resources
from corral.core.node_states import IdleBehavior, NodeState
from corral.core.planner import DemandGroup, DemandTally, Plan, PoolNode, plan
from corral.core.snapshot import Pending
from corral.testing import engine, pending


def node(
    node_id: str,
    engine_id: str = "a",
    *,
    used: int = 0,
    state: NodeState = NodeState.IDLE,
    behavior: IdleBehavior = IdleBehavior.RUN,
    created_at: float = 0.0,
    idle_for: float = 0.0,
) -> PoolNode:
    return PoolNode(
        NodeId(node_id), EngineId(engine_id), state, used, behavior, created_at, idle_for
    )


def grouped(demands: Iterable[Pending]) -> list[DemandGroup]:
    """A queue as the dispatcher's tally would give it to the planner."""
    tally = DemandTally()
    for demand in demands:
        tally.add(demand)
    return tally.groups()


def queued(count: int, engine_id: str | None = None, **constraints: object) -> list:
    return grouped(
        pending(f"q{i}", engine=engine_id, constraints=constraints) for i in range(count)
    )


def test_an_empty_pool_boots_base_need_nodes_per_engine():
    engines = (engine("a", base_need=2, maximum_vms=4), engine("b", base_need=1))
    assert plan(engines, [], []).boot == {"a": 2, "b": 1}


def test_the_queue_grows_the_pool_by_whole_nodes_up_to_maximum_vms():
    engines = (engine("a", slots=4, base_need=1, maximum_vms=3),)
    one = [node("n1", used=4)]
    assert plan(engines, one, queued(5)).boot == {"a": 2}  # ceil((4 + 5) / 4) = 3
    assert plan(engines, one, queued(50)).boot == {"a": 2}  # capped at maximum_vms
    assert plan(engines, one, queued(3)).boot == {"a": 1}


def test_spare_slots_keep_free_room_beyond_the_queue():
    engines = (engine("a", slots=4, base_need=0, maximum_vms=5, spare_slots=2),)
    assert plan(engines, [node("n1", used=3)], []).boot == {"a": 1}  # ceil((3 + 2) / 4)
    assert plan(engines, [], []).boot == {"a": 1}


def test_booting_nodes_count_so_a_tick_never_boots_twice_for_one_need():
    engines = (engine("a", slots=1, base_need=0, maximum_vms=4),)
    booting = [node("n1", state=NodeState.BOOTING), node("n2", state=NodeState.BOOTING)]
    assert plan(engines, booting, queued(2)).boot == {}


def test_surplus_nodes_retire_only_after_idle_timeout_and_newest_first():
    engines = (engine("a", slots=1, base_need=2, maximum_vms=4, idle_timeout=60.0),)
    nodes = [
        node("old", created_at=1.0, idle_for=100.0),
        node("mid", created_at=2.0, idle_for=100.0),
        node("new", created_at=3.0, idle_for=100.0),
        node("fresh", created_at=4.0, idle_for=10.0),
    ]
    result = plan(engines, nodes, [])
    assert result.need == {"a": 2}
    # "fresh" has not been idle long enough, so "old" is the one kept beside it
    assert result.retire == ("new", "mid")
    assert result.boot == {}


def test_occupied_nodes_are_never_retired():
    engines = (engine("a", slots=4, base_need=0, idle_timeout=1.0),)
    result = plan(engines, [node("busy", used=1, state=NodeState.BUSY)], [])
    assert result.retire == ()
    assert result.need == {"a": 1}


def test_a_held_node_is_kept_and_gives_no_capacity():
    engines = (engine("a", slots=2, base_need=1, maximum_vms=2, idle_timeout=1.0),)
    held = node("held", behavior=IdleBehavior.HOLD, idle_for=99.0)
    result = plan(engines, [held], [])
    assert result.retire == ()
    assert result.boot == {"a": 1}  # base_need counts nodes that take work


def test_a_draining_node_retires_once_empty_whatever_the_need():
    engines = (engine("a", slots=2, base_need=2, maximum_vms=3),)
    draining = [
        node("empty", behavior=IdleBehavior.DRAIN),
        node("working", used=1, state=NodeState.BUSY, behavior=IdleBehavior.DRAIN),
    ]
    result = plan(engines, draining, [])
    assert result.retire == ("empty",)
    # draining nodes still count against maximum_vms
    assert result.boot == {"a": 1}


def test_pinned_processes_grow_their_engine_and_others_the_first_that_fits():
    engines = (
        engine("a", slots=1, base_need=0, maximum_vms=2, labels={"zone": "x"}),
        engine("b", slots=1, base_need=0, maximum_vms=2, labels={"zone": "y"}),
    )
    assert plan(engines, [], queued(1, "b")).boot == {"b": 1}
    assert plan(engines, [], queued(1)).boot == {"a": 1}
    assert plan(engines, [], queued(1, zone="y")).boot == {"b": 1}
    # a full engine overflows to the next one that fits
    assert plan(engines, [], queued(3)).boot == {"a": 2, "b": 1}
    # a constraint no engine's labels allow grows nothing
    assert plan(engines, [], queued(1, zone="z")).boot == {}


def test_a_disconnected_node_counts_against_maximum_vms_but_serves_nothing():
    engines = (engine("a", slots=4, base_need=1, maximum_vms=2),)
    away = node("n1", used=1, state=NodeState.DISCONNECTED)
    # its replaced process waits: a node boots beside it, as maximum_vms allows
    assert plan(engines, [away], queued(1)).boot == {"a": 1}
    # two disconnected nodes fill maximum_vms: nothing more boots
    both = [away, node("n2", used=1, state=NodeState.DISCONNECTED)]
    assert plan(engines, both, queued(1)).boot == {}
    # and it is never retired for being idle, nor drained away: the partition decides
    idle = node("n3", state=NodeState.DISCONNECTED, idle_for=1e6)
    drained = node("n4", state=NodeState.DISCONNECTED, behavior=IdleBehavior.DRAIN)
    assert plan(engines, [idle, drained], []).retire == ()


@st.composite
def pools(draw: st.DrawFn) -> tuple[tuple[Engine, ...], list[PoolNode], list]:
    ids = draw(st.lists(st.sampled_from("abc"), min_size=1, max_size=3, unique=True))
    engines = tuple(
        engine(
            i,
            slots=draw(st.integers(1, 4)),
            base_need=(base := draw(st.integers(0, 3))),
            maximum_vms=draw(st.integers(base, 6)),
            spare_slots=draw(st.integers(0, 3)),
            idle_timeout=10.0,
        )
        for i in ids
    )
    nodes = [
        node(
            f"n{k}",
            draw(st.sampled_from([*ids, "retired"])),
            used=draw(st.integers(0, 4)),
            state=draw(st.sampled_from(list(NodeState))),
            behavior=draw(st.sampled_from(list(IdleBehavior))),
            created_at=float(k),
            idle_for=draw(st.sampled_from([0.0, 5.0, 20.0])),
        )
        for k in range(draw(st.integers(0, 8)))
    ]
    queue = queued(draw(st.integers(0, 12)), draw(st.none() | st.sampled_from(ids)))
    return engines, nodes, queue


def _live(nodes: list[PoolNode], engine_id: str) -> list[PoolNode]:
    live = {
        NodeState.BOOTING,
        NodeState.UNKNOWN,
        NodeState.IDLE,
        NodeState.BUSY,
        NodeState.DISCONNECTED,
    }
    return [n for n in nodes if n.engine == engine_id and n.state in live]


@settings(max_examples=300, deadline=None)
@given(pools())
def test_a_plan_never_exceeds_maximum_vms_and_retires_only_empty_idle_nodes(pool):
    engines, nodes, queue = pool
    result: Plan = plan(engines, nodes, queue)
    by_id = {n.node_id: n for n in nodes}
    assert len(set(result.retire)) == len(result.retire)
    for e in engines:
        live = _live(nodes, e.engine_id)
        booted = result.boot.get(e.engine_id, 0)
        assert e.engine_id not in result.boot or booted > 0
        assert len(live) + booted <= max(e.maximum_vms, len(live))
        assert result.need[e.engine_id] <= e.maximum_vms
    for node_id in result.retire:
        retired = by_id[node_id]
        assert retired.used == 0
        assert retired.state in (NodeState.IDLE, NodeState.BUSY, NodeState.UNKNOWN)
        if retired.idle_behavior is IdleBehavior.RUN:
            assert retired.state is NodeState.IDLE
            assert retired.idle_for >= 10.0
        else:
            assert retired.idle_behavior is IdleBehavior.DRAIN


@settings(max_examples=300, deadline=None)
@given(pools())
def test_a_plan_is_stable_once_carried_out(pool):
    """Booting what it asks and retiring what it names leaves nothing more to retire, and more
    to boot only where a retired node was in the way of maximum_vms: the pool does not
    flap."""
    engines, nodes, queue = pool
    first = plan(engines, nodes, queue)
    after = [n for n in nodes if n.node_id not in first.retire]
    for engine_id, count in first.boot.items():
        after += [
            node(f"{engine_id}-new{i}", engine_id, state=NodeState.BOOTING) for i in range(count)
        ]
    second = plan(engines, after, queue)
    assert second.retire == ()
    retired_from = {n.engine for n in nodes if n.node_id in first.retire}
    assert set(second.boot) <= retired_from


SMALL = InstanceType("small", "t3.small", vcpus=2, ram=2048, price=0.02)
LARGE = InstanceType("large", "t3.xlarge", vcpus=8, ram=16384, price=0.16)
GPU = InstanceType("gpu", "g5.xlarge", vcpus=4, ram=16384, gpus=1, price=1.0)


def typed(**settings: object) -> Engine:
    values: dict[str, object] = {
        "slots": 8,
        "base_need": 0,
        "maximum_vms": 10,
        "instance_types": (SMALL, LARGE, GPU),
        **settings,
    }
    return engine("a", **values)


def needing(count: int, **resources: float) -> list:
    return grouped(pending(f"r{i}", resources=Resources(**resources)) for i in range(count))  # type: ignore[arg-type]


def test_the_cheapest_type_that_fits_is_booted() -> None:
    assert plan((typed(),), [], needing(1, cpus=1, memory=1024)).boot_types == {"a": ("small",)}
    assert plan((typed(),), [], needing(1, cpus=4)).boot_types == {"a": ("large",)}
    assert plan((typed(),), [], needing(1, cpus=1, gpus=1)).boot_types == {"a": ("gpu",)}


def test_several_processes_share_a_node_when_its_resources_allow() -> None:
    result = plan((typed(),), [], needing(4, cpus=2, memory=1024))
    # each process needs a whole small node (2 cpus): four small ones cost 0.08, one
    # large one 0.16, so the cheapest type that fits each is booted
    assert result.boot_types == {"a": ("small", "small", "small", "small")}
    packed = plan((typed(),), [], needing(3, cpus=1, memory=512))
    assert packed.boot_types == {"a": ("small", "small")}  # two per small node


def test_room_on_live_and_booting_nodes_is_used_before_booting_more() -> None:
    booting = PoolNode(NodeId("b1"), EngineId("a"), NodeState.BOOTING, room=Resources(8, 16384))
    assert plan((typed(),), [booting], needing(3, cpus=2)).boot == {}


def test_a_process_no_type_fits_boots_nothing_and_maximum_vms_caps_the_rest() -> None:
    assert plan((typed(),), [], needing(1, cpus=64)).boot == {}
    capped = plan((typed(maximum_vms=2),), [], needing(5, cpus=2, memory=2048))
    assert capped.boot_types == {"a": ("small", "small")}


def test_base_need_nodes_are_of_the_cheapest_type() -> None:
    assert plan((typed(base_need=2),), [], []).boot_types == {"a": ("small", "small")}


def test_at_the_quota_idle_nodes_make_way_for_the_type_that_work_needs() -> None:
    idle_small = PoolNode(
        NodeId("s1"), EngineId("a"), NodeState.IDLE, idle_for=1.0, room=Resources(2, 2048)
    )
    waiting = needing(1, cpus=4)  # needs a large node
    calm = plan((typed(idle_timeout=60.0),), [idle_small], waiting)
    assert calm.retire == ()
    assert calm.boot_types == {"a": ("large",)}
    pressed = plan((typed(idle_timeout=60.0),), [idle_small], waiting, quota_reached={"a"})
    assert pressed.retire == ("s1",)
    # and nothing is shut when no work waits for another node
    assert plan((typed(),), [idle_small], [], quota_reached={"a"}).retire == ()


def _kinds_of_demand() -> st.SearchStrategy[list]:
    kind = st.tuples(
        st.none() | st.sampled_from(["a", "b"]),
        st.sampled_from([{}, {"zone": "x"}, {"zone": ["x", "y"]}, {"zone": "z"}]),
    )
    return st.lists(kind, max_size=30).map(
        lambda kinds: [
            pending(f"q{i}", engine=engine_id, constraints=constraints)
            for i, (engine_id, constraints) in enumerate(kinds)
        ]
    )


TWO_ZONES = (
    engine("a", slots=2, base_need=0, maximum_vms=1, labels={"zone": "x"}),
    engine("b", slots=3, base_need=0, maximum_vms=1, labels={"zone": "y"}),
)


def test_room_goes_first_to_what_can_run_nowhere_else() -> None:
    free, only_a = pending("free"), pending("only-a", constraints={"zone": "x"})
    one_node = [node("n1", "a", state=NodeState.IDLE)]
    # Engine a has room for two: the process that fits only there takes one, so of the two
    # that fit anywhere one goes to b, which boots a node for it.
    for queue in ([free, only_a, free], [free, free, only_a]):
        assert plan(TWO_ZONES, one_node, grouped(queue)).boot == {"b": 1}


@settings(max_examples=300, deadline=None)
@given(demands=_kinds_of_demand(), used=st.integers(0, 2), order=st.randoms())
def test_a_plan_does_not_hang_on_the_order_of_the_queue(demands, used, order):
    nodes = [node("n1", "a", used=used, state=NodeState.BUSY)]
    shuffled = list(demands)
    order.shuffle(shuffled)
    assert plan(TWO_ZONES, nodes, grouped(shuffled)) == plan(TWO_ZONES, nodes, grouped(demands))


def test_the_tally_follows_the_queue_and_forgets_what_left() -> None:
    tally = DemandTally()
    first, second, other = pending("p1"), pending("p2"), pending("p3", constraints={"zone": "x"})
    for demand in (first, second, other):
        tally.add(demand)
    assert tally.groups() == [(first, 2), (other, 1)]
    tally.remove(first)
    tally.remove(other)
    assert tally.groups() == [(first, 1)]  # the group keeps whichever came first
    tally.remove(second)
    assert tally.groups() == []
