"""Launch-ahead in the matchmaker: placements on busy nodes, and taking them back."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.core.constraints import ReasonKind
from corral.core.matchmaker import match, may_go_ahead
from corral.core.model import Resources
from corral.core.process_states import QueueingMode
from corral.testing import node_view, pending, snapshot


def placed(result) -> dict[str, str]:
    return {p.upid: p.node_id for p in result.placements}


def test_a_free_slot_wins_over_a_spot_ahead_on_a_busy_node() -> None:
    nodes = [node_view("busy", slots=2, used=2, ahead=2), node_view("free", slots=2, used=1)]
    result = match(snapshot(nodes=nodes, queue=[pending("p1"), pending("p2")]))
    assert placed(result) == {"p1": "free", "p2": "busy"}


def test_a_node_holds_at_most_ahead_launches_beyond_its_slots() -> None:
    node = node_view("n", slots=2, used=3, ahead=2)
    result = match(snapshot(nodes=[node], queue=[pending(f"p{i}") for i in range(3)]))
    assert placed(result) == {"p0": "n"}
    assert {u: r.kind for u, r in result.waiting.items()} == {
        "p1": ReasonKind.SLOTS,
        "p2": ReasonKind.SLOTS,
    }


def test_the_node_with_the_shortest_queue_takes_the_next_launch_ahead() -> None:
    nodes = [
        node_view("long", slots=2, used=3, ahead=2),
        node_view("short", slots=2, used=2, ahead=2),
    ]
    result = match(snapshot(nodes=nodes, queue=[pending("p1"), pending("p2")]))
    assert placed(result) == {"p1": "short", "p2": "long"}


def test_only_a_process_that_needs_nothing_but_a_slot_and_may_wait_goes_ahead() -> None:
    node = node_view("n", slots=1, used=1, ahead=8, properties={"zone": "a"})
    queue = [
        pending("constrained", constraints={"zone": "a"}),
        pending("tagged", node_exclusive="x"),
        pending("sized", resources=Resources(cpus=1)),
        pending("first-start-only", queueing_mode=QueueingMode.START_ONLY),
        pending("never", queueing_mode=QueueingMode.NEVER),
        pending("plain"),
    ]
    result = match(snapshot(nodes=[node], queue=queue))
    assert placed(result) == {"plain": "n"}
    # a spot ahead is not a free slot: a process that may not wait is still rejected
    assert set(result.rejected) == {"never"}
    assert set(result.waiting) == {"constrained", "tagged", "sized", "first-start-only"}


def test_a_node_without_slots_takes_nothing_ahead() -> None:
    result = match(snapshot(nodes=[node_view("n", slots=0, ahead=4)], queue=[pending("p")]))
    assert not result.placements


def test_an_unpinned_process_takes_a_free_slot_of_a_later_engine_before_a_spot_ahead() -> None:
    nodes = [
        node_view("a1", engine="a", slots=1, used=1, ahead=1),
        node_view("b1", engine="b", slots=1, used=0, ahead=1),
    ]
    queue = [pending("pinned", engine="a"), pending("free")]
    result = match(snapshot(nodes=nodes, queue=queue, engines=["a", "b"]))
    assert placed(result) == {"pinned": "a1", "free": "b1"}


def test_launches_queued_ahead_are_withdrawn_to_fill_the_free_slots() -> None:
    nodes = [
        node_view("long", slots=1, used=3, ahead=2, queued=2),
        node_view("short", slots=1, used=2, ahead=2, queued=1),
        node_view("free", slots=3, used=0),
    ]
    assert match(snapshot(nodes=nodes)).withdraw == {"default": 3}
    nodes[2] = node_view("free", slots=3, used=2)
    assert match(snapshot(nodes=nodes)).withdraw == {"default": 1}


def test_a_free_slot_goes_to_a_launch_queued_ahead_before_the_queue() -> None:
    # the launch queued ahead was placed before anything still in the queue
    nodes = [node_view("busy", slots=1, used=2, ahead=1, queued=1), node_view("free", slots=1)]
    result = match(snapshot(nodes=nodes, queue=[pending("p")]))
    assert result.withdraw == {"default": 1}
    assert placed(result) == {}
    assert result.waiting["p"].kind is ReasonKind.SLOTS


def test_a_launch_being_withdrawn_keeps_its_free_slot_until_it_is_back() -> None:
    nodes = [
        node_view("busy", slots=1, used=2, ahead=1, withdrawing=1),
        node_view("free", slots=2),
    ]
    result = match(snapshot(nodes=nodes, queue=[pending("p1"), pending("p2")]))
    assert result.withdraw == {}
    assert placed(result) == {"p1": "free"}
    assert set(result.waiting) == {"p2"}


def test_a_free_slot_of_another_engine_withdraws_nothing() -> None:
    nodes = [
        node_view("a1", engine="a", slots=1, used=2, ahead=1, queued=1),
        node_view("b1", engine="b", slots=1),
    ]
    assert match(snapshot(nodes=nodes, engines=["a", "b"])).withdraw == {}


def test_a_withdrawn_launch_back_in_the_queue_is_placed_before_the_queue() -> None:
    nodes = [node_view("busy", slots=1, used=2, ahead=1, queued=1), node_view("free", slots=1)]
    back = pending("back", round=2)
    snap = replace(snapshot(nodes=nodes, queue=[pending("older"), back]), returning=(back,))
    result = match(snap)
    assert placed(result) == {"back": "free"}
    assert result.withdraw == {}  # no free slot is left for the launch still queued
    assert set(result.waiting) == {"older"}


@st.composite
def busy_snapshots(draw: st.DrawFn):
    engine_ids = draw(st.lists(st.sampled_from(["a", "b"]), min_size=1, max_size=2, unique=True))
    nodes = []
    for i in range(draw(st.integers(0, 5))):
        slots = draw(st.integers(0, 3))
        used = draw(st.integers(0, 6))
        beyond = max(0, used - slots)
        withdrawing = draw(st.integers(0, beyond))
        nodes.append(
            node_view(
                f"n{i}",
                engine=draw(st.sampled_from(engine_ids)),
                slots=slots,
                used=used,
                ahead=draw(st.integers(0, 2)),
                queued=draw(st.integers(0, beyond - withdrawing)),
                withdrawing=withdrawing,
                properties={"zone": draw(st.sampled_from(["x", "y"]))},
            )
        )
    queue = [
        pending(
            f"p{i}",
            constraints=draw(st.just({}) | st.just({"zone": "x"})),
            engine=draw(st.none() | st.sampled_from(engine_ids)),
            node_exclusive=draw(st.none() | st.just("t")),
            queueing_mode=draw(st.sampled_from(list(QueueingMode))),
            has_reason=draw(st.booleans()),
        )
        for i in range(draw(st.integers(0, 10)))
    ]
    return snapshot(nodes=nodes, queue=queue, engines=engine_ids)


@given(busy_snapshots())
@settings(max_examples=300, deadline=None)
def test_no_node_takes_more_than_ahead_beyond_its_slots_and_a_free_slot_always_wins(snap):
    result = match(snap)
    nodes = {n.node_id: n for n in snap.nodes}
    queue = {p.upid: p for p in snap.queue}
    on: dict[str, list] = {}
    for placement in result.placements:
        on.setdefault(placement.node_id, []).append(queue[placement.upid])
    left = {e.engine_id: 0 for e in snap.engines}
    for node in snap.nodes:
        free = max(0, node.slots - node.used)
        took = on.get(node.node_id, [])
        beyond = max(0, len(took) - free)
        spots = max(0, node.slots + node.ahead - max(node.used, node.slots))
        assert beyond <= (spots if node.slots > 0 else 0)
        # only processes that need nothing but a slot, and may always wait, go ahead
        assert sum(not may_go_ahead(p) for p in took) <= free
        left[node.engine] += free - min(free, len(took))
    for engine_id, count in result.withdraw.items():
        engine_nodes = [n for n in snap.nodes if n.engine == engine_id]
        assert 0 < count <= sum(n.queued for n in engine_nodes)
        assert count <= sum(max(0, n.slots - n.used) for n in engine_nodes)
    for node_id, took in on.items():
        node = nodes[node_id]
        if len(took) > max(0, node.slots - node.used):
            # placed ahead: its engine had no free slot left, and owed none to queued launches
            assert left[node.engine] == 0
            assert node.engine not in result.withdraw
