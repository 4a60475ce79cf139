"""The process lifecycle: (round, state) only moves forward, parsing, and queueing modes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.core.process_states import (
    MATCHABLE_STATES,
    QUEUED_STATES,
    SLOT_STATES,
    TERMINAL_STATES,
    TRANSITIONS,
    ProcessEvent,
    ProcessState,
    QueueingMode,
    advance,
    can_advance,
)
from corral.errors import IllegalTransition

S = ProcessState
E = ProcessEvent


def _order(round_: int, state: ProcessState | None) -> tuple[int, int]:
    """The total order processes move along; no record yet sorts below everything."""
    return round_, 0 if state is None else int(state)


def _allowed(state: ProcessState | None, event: ProcessEvent) -> bool:
    """The documented rule: the table, plus scheduling a finished process again."""
    if event is E.SCHEDULE and state in TERMINAL_STATES:
        return True
    return state in TRANSITIONS[event].sources


# -- transitions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "source"),
    [(event, source) for event, t in TRANSITIONS.items() for source in t.sources],
    ids=str,
)
def test_every_transition_in_the_table_moves_forward_in_round_and_state(event, source):
    transition = TRANSITIONS[event]
    round_, state = advance(source, 7, event)
    assert state is transition.target
    if transition.new_round:
        assert round_ == 8
    else:
        # within a round the EPU number only grows
        assert round_ == 7
        assert source is None or int(state) > int(source)


@pytest.mark.parametrize("finished", sorted(TERMINAL_STATES))
def test_scheduling_a_finished_process_opens_a_new_round(finished):
    assert can_advance(finished, E.SCHEDULE)
    assert advance(finished, 3, E.SCHEDULE) == (4, S.REQUESTED)


def test_scheduling_an_unscheduled_process_stays_in_its_round():
    assert advance(S.UNSCHEDULED, 0, E.SCHEDULE) == (0, S.REQUESTED)
    assert advance(None, 0, E.SCHEDULE) == (0, S.REQUESTED)


@pytest.mark.parametrize("event", list(E), ids=lambda e: e.value)
@pytest.mark.parametrize("state", [None, *S], ids=str)
def test_can_advance_says_exactly_what_advance_accepts(state, event):
    try:
        advance(state, 0, event)
    except IllegalTransition:
        accepted = False
    else:
        accepted = True
    assert can_advance(state, event) is accepted
    assert accepted is _allowed(state, event)


def test_an_illegal_move_names_the_state_and_the_event():
    with pytest.raises(IllegalTransition, match=r"500-RUNNING cannot assign"):
        advance(S.RUNNING, 1, E.ASSIGN)
    with pytest.raises(IllegalTransition, match=r"nothing cannot start"):
        advance(None, 0, E.START)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list(E)), max_size=60))
def test_any_sequence_of_events_only_moves_round_and_state_forward(events):
    round_, state = 0, None
    for event in events:
        if not _allowed(state, event):
            with pytest.raises(IllegalTransition):
                advance(state, round_, event)
            continue
        new_round, new_state = advance(state, round_, event)
        assert _order(new_round, new_state) > _order(round_, state)
        opens = TRANSITIONS[event].new_round or (event is E.SCHEDULE and state in TERMINAL_STATES)
        assert new_round == round_ + (1 if opens else 0)
        if not opens:
            assert new_state is not None
            assert state is None or int(new_state) > int(state)
        round_, state = new_round, new_state


def test_every_state_is_reachable_from_no_record():
    seen: set[ProcessState | None] = {None}
    frontier: list[ProcessState | None] = [None]
    while frontier:
        state = frontier.pop()
        for event in E:
            if can_advance(state, event):
                _, target = advance(state, 0, event)
                if target not in seen:
                    seen.add(target)
                    frontier.append(target)
    assert seen == {None, *S}


def test_a_terminal_process_moves_only_by_a_restart_or_a_new_schedule():
    leaving = {e for e in E for s in TERMINAL_STATES if can_advance(s, e)}
    assert leaving == {E.RESTART_LATER, E.RESTART_NOW, E.SCHEDULE}


# -- names and parsing -------------------------------------------------------------------------


def test_str_of_a_state_is_its_epu_number_and_name():
    assert str(S.RUNNING) == "500-RUNNING"
    assert str(S.UNSCHEDULED_PENDING) == "150-UNSCHEDULED_PENDING"


def test_state_values_are_the_epu_numbers_in_order():
    assert [int(s) for s in S] == [100, 150, 200, 250, 300, 350, 400, 500, 600, 700, 800, 850, 900]
    assert sorted(S) == list(S)


@pytest.mark.parametrize("text", ["500-RUNNING", "RUNNING", "running", "500", 500, " 500 "])
def test_parse_accepts_every_spelling_of_a_state(text):
    assert S.parse(text) is S.RUNNING


@pytest.mark.parametrize("state", list(S), ids=str)
def test_parse_reads_back_what_str_writes(state):
    assert S.parse(str(state)) is state
    assert S.parse(state.name.lower()) is state


@pytest.mark.parametrize("text", ["500-EXITED", "bogus", "501", 501, "", "-RUNNING", "500-"])
def test_parse_rejects_what_is_not_a_state(text):
    with pytest.raises(ValueError, match="not a"):
        S.parse(text)


# -- queueing modes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "first_start", "restart"),
    [
        (QueueingMode.NEVER, False, False),
        (QueueingMode.ALWAYS, True, True),
        (QueueingMode.START_ONLY, True, False),
        (QueueingMode.RESTART_ONLY, False, True),
    ],
)
def test_queueing_mode_says_when_a_process_may_wait_as_the_epu_does(mode, first_start, restart):
    assert mode.may_wait(is_restart=False) is first_start
    assert mode.may_wait(is_restart=True) is restart


def test_queueing_modes_are_spelled_as_the_epu_spells_them():
    assert {m.value for m in QueueingMode} == {"NEVER", "ALWAYS", "START_ONLY", "RESTART_ONLY"}


# -- state sets --------------------------------------------------------------------------------


def test_terminal_states_are_the_four_ends():
    assert {s for s in S if s.is_terminal} == {S.TERMINATED, S.EXITED, S.FAILED, S.REJECTED}
    assert {S.TERMINATED, S.EXITED, S.FAILED, S.REJECTED} == TERMINAL_STATES


def test_queued_states_are_those_waiting_for_a_slot_or_a_delay():
    assert {s for s in S if s.is_queued} == {
        S.UNSCHEDULED_PENDING,
        S.REQUESTED,
        S.DIED_REQUESTED,
        S.WAITING,
    }
    # the matchmaker looks at every queued state except a restart still in its delay
    assert QUEUED_STATES - {S.UNSCHEDULED_PENDING} == MATCHABLE_STATES


def test_slot_states_are_those_between_assignment_and_the_end():
    assert {s for s in S if s.holds_slot} == {S.ASSIGNED, S.PENDING, S.RUNNING, S.TERMINATING}
    assert {s for s in S if S.ASSIGNED <= s <= S.TERMINATING} == SLOT_STATES


def test_no_state_is_both_queued_holding_a_slot_or_terminal():
    assert not QUEUED_STATES & SLOT_STATES
    assert not QUEUED_STATES & TERMINAL_STATES
    assert not SLOT_STATES & TERMINAL_STATES
    # an unscheduled process is none of them: it was never asked for
    assert not S.UNSCHEDULED.is_queued
    assert not S.UNSCHEDULED.holds_slot
    assert not S.UNSCHEDULED.is_terminal


def test_a_process_that_holds_a_slot_can_always_be_terminated_or_restarted():
    for state in SLOT_STATES:
        assert can_advance(state, E.TERMINATED) or can_advance(state, E.TERMINATE)
        assert can_advance(state, E.RESTART_NOW)
        assert can_advance(state, E.RESTART_LATER)
