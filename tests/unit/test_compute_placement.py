"""Where tasks and worker processes go (``corral.compute.placement``)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.compute.placement import least_loaded, worker_slots


@dataclass
class Proc:
    node: str
    load: int


procs = st.lists(st.builds(Proc, st.sampled_from(["a", "b", "c"]), st.integers(0, 20)), max_size=12)


@given(procs)
def test_the_chosen_process_has_the_least_load_of_the_least_loaded_node(ps: list[Proc]) -> None:
    chosen = least_loaded(ps, None)
    if not ps:
        assert chosen is None
        return
    assert chosen is not None

    def average(node: str) -> float:
        loads = [p.load for p in ps if p.node == node]
        return sum(loads) / len(loads)

    assert average(chosen.node) == min(average(p.node) for p in ps)
    assert chosen.load == min(p.load for p in ps if p.node == chosen.node)


@given(procs, st.sampled_from(["a", "b", "c"]))
def test_a_node_address_picks_its_least_loaded_process(ps: list[Proc], node: str) -> None:
    chosen = least_loaded(ps, node)
    on_node = [p for p in ps if p.node == node]
    if not on_node:
        assert chosen is None
    else:
        assert chosen is not None
        assert chosen.node == node
        assert chosen.load == min(p.load for p in on_node)


NODES = [
    {"node_id": "n1", "engine": "default", "state": "idle", "slots": 2, "labels": {"zone": "a"}},
    {"node_id": "n2", "engine": "default", "state": "busy", "slots": 3, "labels": {"zone": "b"}},
    {"node_id": "n3", "engine": "gpu", "state": "idle", "slots": 1, "labels": {}},
    {"node_id": "n4", "engine": "default", "state": "booting", "slots": 4, "labels": {}},
]


def test_without_a_count_every_slot_of_every_live_matching_node_gets_a_pinned_worker() -> None:
    assert worker_slots(NODES, None, None, {}) == (
        [{"node_id": "n1"}] * 2 + [{"node_id": "n2"}] * 3 + [{"node_id": "n3"}]
    )
    assert worker_slots(NODES, None, "default", {"zone": ["b", "c"]}) == [{"node_id": "n2"}] * 3
    assert worker_slots(NODES, None, "gpu", {"zone": "a"}) == []


def test_a_count_leaves_placement_to_the_dispatcher() -> None:
    assert worker_slots(NODES, 3, "default", {"zone": "a"}) == [{}, {}, {}]
    with pytest.raises(ValueError, match="workers must be at least 1, not 0"):
        worker_slots(NODES, 0, None, {})
