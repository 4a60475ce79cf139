"""The node lifecycle and heartbeat health, driven by a ManualClock where time matters."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.clock import Clock
from corral.core.node_states import (
    NODE_TRANSITIONS,
    Health,
    IdleBehavior,
    NodeState,
    advance_node,
    classify_health,
)
from corral.errors import IllegalTransition
from corral.testing import ManualClock

N = NodeState

# -- transitions -------------------------------------------------------------------------------

LEGAL = [(s, t) for s, targets in NODE_TRANSITIONS.items() for t in targets]
ILLEGAL = [(s, t) for s in N for t in N if t is not s and t not in NODE_TRANSITIONS[s]]


def test_every_node_state_has_a_row_in_the_table():
    assert set(NODE_TRANSITIONS) == set(N)


@pytest.mark.parametrize(("state", "target"), LEGAL, ids=str)
def test_a_listed_move_is_allowed(state, target):
    assert advance_node(state, target) is target


@pytest.mark.parametrize(("state", "target"), ILLEGAL, ids=str)
def test_a_move_not_listed_raises_illegal_transition(state, target):
    with pytest.raises(IllegalTransition, match=f"{state} cannot become {target}"):
        advance_node(state, target)


@pytest.mark.parametrize("state", list(N), ids=str)
def test_a_node_may_always_stay_in_its_state(state):
    assert advance_node(state, state) is state


def test_the_node_lifecycle_is_booting_idle_busy_shutting_down_gone():
    path = [N.BOOTING, N.IDLE, N.BUSY, N.IDLE, N.SHUTTING_DOWN, N.GONE]
    state = path[0]
    for target in path[1:]:
        state = advance_node(state, target)
    assert state is N.GONE


def test_gone_is_final_and_nothing_returns_to_booting():
    assert NODE_TRANSITIONS[N.GONE] == frozenset()
    assert all(N.BOOTING not in targets for targets in NODE_TRANSITIONS.values())


def test_a_node_shutting_down_can_only_become_gone():
    assert NODE_TRANSITIONS[N.SHUTTING_DOWN] == {N.GONE}


def test_a_node_found_after_a_restart_joins_the_lifecycle_or_leaves_it():
    assert NODE_TRANSITIONS[N.UNKNOWN] == {
        N.IDLE,
        N.BUSY,
        N.SHUTTING_DOWN,
        N.GONE,
        N.DISCONNECTED,
    }
    # and a connected node whose agent goes quiet becomes unknown again
    assert N.UNKNOWN in NODE_TRANSITIONS[N.IDLE]
    assert N.UNKNOWN in NODE_TRANSITIONS[N.BUSY]


def test_a_silent_node_is_disconnected_and_then_comes_back_or_is_lost():
    for state in (N.IDLE, N.BUSY, N.UNKNOWN):
        assert N.DISCONNECTED in NODE_TRANSITIONS[state]
    assert NODE_TRANSITIONS[N.DISCONNECTED] == {
        N.IDLE,
        N.BUSY,
        N.SHUTTING_DOWN,
        N.GONE,
        N.UNKNOWN,
    }
    # a node still booting has run nothing: it times out, it is never disconnected
    assert N.DISCONNECTED not in NODE_TRANSITIONS[N.BOOTING]


def test_every_state_can_reach_gone():
    for start in N:
        seen, frontier = {start}, [start]
        while frontier:
            for nxt in NODE_TRANSITIONS[frontier.pop()] - seen:
                seen.add(nxt)
                frontier.append(nxt)
        assert N.GONE in seen, f"{start} never ends"


def test_node_states_and_idle_behaviours_are_spelled_in_lower_case():
    assert [str(s) for s in N] == [
        "booting",
        "idle",
        "busy",
        "shutting_down",
        "gone",
        "unknown",
        "disconnected",
    ]
    assert [b.value for b in IdleBehavior] == ["run", "hold", "drain"]


# -- health ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("since", "health"),
    [
        (0.0, Health.OK),
        (2.999, Health.OK),
        (3.0, Health.WARNING),
        (5.999, Health.WARNING),
        (6.0, Health.MISSING),
        (1e9, Health.MISSING),
    ],
)
def test_health_turns_warning_at_the_warning_time_and_missing_at_the_missing_time(since, health):
    assert classify_health(since, warning_after=3.0, missing_after=6.0) is health


@settings(max_examples=200, deadline=None)
@given(
    st.floats(0, 1e6, allow_nan=False),
    st.floats(0, 1e6, allow_nan=False),
    st.floats(0.001, 1e3),
    st.floats(0.001, 1e3),
)
def test_health_only_gets_worse_as_silence_grows(a, b, warning, gap):
    order = [Health.OK, Health.WARNING, Health.MISSING]
    missing = warning + gap
    early, late = sorted((a, b))
    assert order.index(classify_health(early, warning, missing)) <= order.index(
        classify_health(late, warning, missing)
    )


def test_a_node_heard_from_goes_warning_then_missing_as_the_manual_clock_advances():
    clock = ManualClock(start=100.0)
    last_heard = clock.monotonic()
    seen = []
    for _ in range(4):
        seen.append(classify_health(clock.monotonic() - last_heard, 3.0, 6.0))
        clock.advance(2.0)
    assert seen == [Health.OK, Health.OK, Health.WARNING, Health.MISSING]


def test_a_wall_clock_step_does_not_change_health_measured_on_the_monotonic_clock():
    clock = ManualClock()
    last_heard = clock.monotonic()
    clock.set_time(clock.time() + 3600.0)
    assert classify_health(clock.monotonic() - last_heard, 3.0, 6.0) is Health.OK


# -- ManualClock -------------------------------------------------------------------------------


def test_manual_clock_is_a_clock():
    clock: Clock = ManualClock()
    assert clock.monotonic() == 0.0


def test_manual_clock_moves_only_when_advanced_and_both_readings_together():
    clock = ManualClock(start=5.0, wall_start=1000.0)
    assert (clock.monotonic(), clock.time()) == (5.0, 1000.0)
    assert (clock.monotonic(), clock.time()) == (5.0, 1000.0)
    clock.advance(2.5)
    assert (clock.monotonic(), clock.time()) == (7.5, 1002.5)


def test_manual_clock_starts_its_wall_time_far_from_zero():
    assert ManualClock().time() > 1e9


def test_manual_clock_cannot_go_back():
    clock = ManualClock()
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance(-1.0)
    with pytest.raises(ValueError, match="finite"):
        clock.advance(float("nan"))
    assert clock.monotonic() == 0.0


def test_manual_clock_wall_time_may_step_back_while_monotonic_time_stays():
    clock = ManualClock(start=10.0, wall_start=500.0)
    clock.set_time(100.0)
    assert (clock.monotonic(), clock.time()) == (10.0, 100.0)
