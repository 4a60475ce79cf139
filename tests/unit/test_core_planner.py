"""The planner keeps base_need nodes per engine and never goes above maximum_vms."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.core.ids import EngineId
from corral.core.model import Engine
from corral.core.planner import nodes_to_boot
from corral.testing import engine


def test_an_empty_pool_boots_base_need_nodes_per_engine():
    engines = (engine("a", base_need=2, maximum_vms=4), engine("b", base_need=1))
    assert nodes_to_boot(engines, {}) == {"a": 2, "b": 1}


def test_only_the_missing_nodes_are_booted():
    engines = (engine("a", base_need=3, maximum_vms=4),)
    assert nodes_to_boot(engines, {EngineId("a"): 1}) == {"a": 2}


def test_an_engine_at_base_need_boots_nothing_and_is_left_out():
    engines = (engine("a", base_need=2), engine("b", base_need=0))
    assert nodes_to_boot(engines, {EngineId("a"): 2}) == {}


def test_base_need_above_maximum_vms_stops_at_maximum_vms():
    engines = (engine("a", base_need=5, maximum_vms=2),)
    assert nodes_to_boot(engines, {}) == {"a": 2}


def test_nodes_of_an_engine_no_longer_configured_are_ignored():
    assert nodes_to_boot((engine("a", base_need=1),), {EngineId("gone"): 3}) == {"a": 1}


@st.composite
def pools(draw: st.DrawFn) -> tuple[tuple[Engine, ...], dict[EngineId, int]]:
    ids = draw(st.lists(st.sampled_from("abcdef"), min_size=0, max_size=4, unique=True))
    engines = tuple(
        engine(i, base_need=draw(st.integers(0, 8)), maximum_vms=draw(st.integers(0, 8)))
        for i in ids
    )
    live = {EngineId(i): draw(st.integers(0, 10)) for i in ids if draw(st.booleans())}
    return engines, live


@settings(max_examples=200, deadline=None)
@given(pools())
def test_boots_reach_base_need_and_never_go_above_maximum_vms(pool):
    engines, live = pool
    boots = nodes_to_boot(engines, live)
    assert set(boots) <= {e.engine_id for e in engines}
    for e in engines:
        have = live.get(e.engine_id, 0)
        booted = boots.get(e.engine_id, 0)
        assert e.engine_id not in boots or booted > 0
        # never above maximum_vms because of this plan
        assert have + booted <= max(e.maximum_vms, have)
        # base_need kept, as far as maximum_vms allows
        assert have + booted >= min(e.base_need, e.maximum_vms)
        # and no more than needed
        assert booted == max(0, min(e.base_need, e.maximum_vms) - have)
