"""The disconnect policy: reading it, its verdict on a process of a disconnected node, and
the fence that keeps an at-most-once process from running twice (``core.disconnect`` and
``dispatcher.rounds.ended``)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.core.disconnect import (
    DisconnectPolicy,
    Fence,
    Verdict,
    check_request,
    fence,
    is_at_most_once,
    verdict,
)
from corral.core.ids import NodeId
from corral.core.process_states import ProcessState, RestartMode
from corral.core.restart import Outcome
from corral.dispatcher.rounds import assigned, ended, started
from corral.errors import InvalidRequest
from corral.testing import process_record

LOST = "node n1 lost: disconnected"
NOW = 1_000_000.0


def disconnect(**policy: Any) -> dict[str, Any]:
    return {"corral": {"disconnect": policy}}


# -- reading the policy ------------------------------------------------------------------------


def test_no_policy_means_no_grace_no_replacement_and_not_at_most_once():
    for configuration in ({}, {"corral": {}}, {"other": 1}, {"corral": {"restart": {}}}):
        assert DisconnectPolicy.from_configuration(configuration) == DisconnectPolicy(0.0)


def test_a_policy_is_read_from_configuration_corral_disconnect():
    policy = DisconnectPolicy.from_configuration(disconnect(grace=30, at_most_once=True))
    assert policy == DisconnectPolicy(grace=30.0, replace=False, at_most_once=True)
    assert DisconnectPolicy.from_configuration(disconnect(replace=True)).replace


@pytest.mark.parametrize(
    ("section", "field", "message"),
    [
        ("soon", "configuration.corral.disconnect", "must be an object"),
        ({"grace": -1}, "configuration.corral.disconnect.grace", "≥ 0"),
        ({"grace": math.nan}, "configuration.corral.disconnect.grace", "≥ 0"),
        ({"grace": True}, "configuration.corral.disconnect.grace", "≥ 0"),
        ({"grace": "30"}, "configuration.corral.disconnect.grace", "≥ 0"),
        ({"replace": 1}, "configuration.corral.disconnect.replace", "true or false"),
        ({"at_most_once": "yes"}, "configuration.corral.disconnect.at_most_once", "true or"),
        ({"survivor": "original"}, "configuration.corral.disconnect.survivor", "not a disc"),
        ({"grace": 5, "replace": True}, "configuration.corral.disconnect.replace", "not both"),
        (
            {"replace": True, "at_most_once": True},
            "configuration.corral.disconnect.replace",
            "cannot be replaced",
        ),
    ],
)
def test_a_wrong_policy_is_refused_naming_its_field(section, field, message):
    with pytest.raises(InvalidRequest, match=message) as caught:
        DisconnectPolicy.from_configuration({"corral": {"disconnect": section}})
    assert caught.value.field == field


def test_a_process_that_never_restarts_may_not_ask_for_a_replacement():
    request = process_record(
        restart_mode=RestartMode.NEVER, configuration=disconnect(replace=True)
    ).request
    with pytest.raises(InvalidRequest, match="NEVER is at-most-once") as caught:
        check_request(request)
    assert caught.value.field == "configuration.corral.disconnect.replace"
    allowed = process_record(
        restart_mode=RestartMode.ALWAYS, configuration=disconnect(replace=True)
    )
    assert check_request(allowed.request).replace


def test_restart_mode_never_or_the_setting_makes_a_process_at_most_once():
    assert is_at_most_once(process_record(restart_mode=RestartMode.NEVER).request)
    assert not is_at_most_once(process_record(restart_mode=RestartMode.ALWAYS).request)
    flagged = process_record(
        restart_mode=RestartMode.ALWAYS, configuration=disconnect(at_most_once=True)
    )
    assert is_at_most_once(flagged.request)


def test_a_policy_stored_before_it_was_checked_reads_as_the_default():
    # a loop must not stop on a record saved by an older corral with garbage there
    record = process_record(configuration=disconnect(grace="long"))
    assert DisconnectPolicy.of(record.request) == DisconnectPolicy()


# -- the verdict -------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.floats(0, 1e6, allow_nan=False), st.floats(0, 1e6, allow_nan=False))
def test_a_process_is_kept_exactly_while_it_is_within_its_grace(grace, away):
    outcome = verdict(DisconnectPolicy(grace=grace), away)
    assert outcome is (Verdict.KEEP if away < grace else Verdict.LOSE)


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 1e6, allow_nan=False), st.floats(0, 1e6, allow_nan=False))
def test_once_lost_a_process_stays_lost_as_the_disconnection_goes_on(grace, extra):
    policy = DisconnectPolicy(grace=grace)
    assert verdict(policy, grace) is Verdict.LOSE
    assert verdict(policy, grace + extra) is Verdict.LOSE


def test_no_grace_loses_a_process_at_once_as_a_plain_node_loss_does():
    assert verdict(DisconnectPolicy(), 0.0) is Verdict.LOSE


@given(st.floats(0, 1e6, allow_nan=False))
def test_a_replaced_process_is_replaced_at_once(away):
    assert verdict(DisconnectPolicy(replace=True), away) is Verdict.REPLACE


# -- the fence ---------------------------------------------------------------------------------


def test_without_a_self_stopping_agent_nobody_knows_when_the_old_copy_stops():
    assert fence(NOW, 1.0, None, 10.0) == Fence(None)


@settings(max_examples=200, deadline=None)
@given(
    st.floats(0.01, 60),
    st.floats(0, 3600),
    st.floats(0, 600),
)
def test_the_fence_comes_after_the_agent_has_certainly_killed_its_processes(
    period, stop_after, grace
):
    # the agent is last heard at most heartbeat_missing before the disconnection, gives
    # up its link after that much silence (plus one heartbeat), waits stop_after, and
    # sends SIGKILL grace later: the fence is no earlier
    until = fence(NOW, period, stop_after, grace).until
    assert until is not None
    assert until >= NOW + period + stop_after + grace


def running_at_most_once(**fields: Any):
    record = process_record(
        state=ProcessState.WAITING,
        restart_mode=RestartMode.ALWAYS,
        configuration=disconnect(at_most_once=True),
        **fields,
    )
    return started(assigned(record, NodeId("n1"), "host", "default", 1.0), 42, 2.0, 2.0)


def test_an_at_most_once_process_restarts_only_after_its_fence():
    record = running_at_most_once()
    later = ended(record, Outcome.NODE_LOST, NOW, 0.5, reason=LOST, fence=Fence(NOW + 30))
    assert later.state is ProcessState.UNSCHEDULED_PENDING
    assert later.round == record.round + 1
    assert later.not_before == NOW + 30
    assert "at-most-once" in (later.waiting_reason or "")
    assert "node n1" in (later.waiting_reason or "")


def test_an_at_most_once_process_whose_fence_is_unknown_fails_instead_of_restarting():
    record = running_at_most_once()
    failed = ended(record, Outcome.NODE_LOST, NOW, 0.5, reason=LOST, fence=Fence(None))
    assert failed.state is ProcessState.FAILED
    assert failed.round == record.round
    assert "stop_after_disconnect" in (failed.end_reason or "")


def test_a_placement_of_an_at_most_once_process_is_fenced_too():
    # the launch was sent: it may have started on the node nobody can reach
    placed = assigned(
        process_record(state=ProcessState.WAITING, restart_mode=RestartMode.NEVER),
        NodeId("n1"),
        "host",
        "default",
        1.0,
    )
    later = ended(placed, Outcome.NODE_LOST, NOW, 0.5, reason=LOST, fence=Fence(NOW + 5))
    assert (later.state, later.not_before) == (ProcessState.UNSCHEDULED_PENDING, NOW + 5)
    failed = ended(placed, Outcome.NODE_LOST, NOW, 0.5, reason=LOST, fence=Fence(None))
    assert failed.state is ProcessState.FAILED


def test_a_fence_already_passed_or_a_longer_backoff_changes_nothing():
    record = running_at_most_once()
    unfenced = ended(record, Outcome.NODE_LOST, NOW, 0.5, reason=LOST)
    assert ended(record, Outcome.NODE_LOST, NOW, 0.5, reason=LOST, fence=Fence(NOW)) == unfenced


def test_a_process_that_is_not_at_most_once_ignores_the_fence():
    record = started(
        assigned(
            process_record(state=ProcessState.WAITING, restart_mode=RestartMode.ALWAYS),
            NodeId("n1"),
            "host",
            "default",
            1.0,
        ),
        42,
        2.0,
        2.0,
    )
    unfenced = ended(record, Outcome.NODE_LOST, NOW, 0.5, reason=LOST)
    assert unfenced.state is ProcessState.DIED_REQUESTED
    assert ended(record, Outcome.NODE_LOST, NOW, 0.5, reason=LOST, fence=Fence(None)) == unfenced


restart_modes = st.sampled_from(list(RestartMode))
states = st.sampled_from([ProcessState.ASSIGNED, ProcessState.PENDING, ProcessState.RUNNING])


@settings(max_examples=300, deadline=None)
@given(
    restart_modes,
    states,
    st.booleans(),
    st.none() | st.floats(0, 1e5, allow_nan=False),
    st.integers(0, 6),
    st.floats(0, 1, exclude_max=True),
)
def test_an_at_most_once_process_never_gets_a_round_before_its_fence(
    mode, state, flagged, offset, dispatches, rand
):
    record = process_record(
        state=state,
        restart_mode=mode,
        configuration=disconnect(at_most_once=True) if flagged else None,
        assigned=NodeId("n1"),
        round=3,
        dispatches=dispatches,
        started_at=1.0 if state is ProcessState.RUNNING else None,
    )
    wall = None if offset is None else NOW + offset
    after = ended(record, Outcome.NODE_LOST, NOW, rand, reason=LOST, fence=Fence(wall))
    # (round, state) moves forward whatever happens
    assert (after.round, after.state) > (record.round, record.state)
    if after.round == record.round or not is_at_most_once(record.request):
        return
    # a new round of an at-most-once process: only with a known fence, and not before it
    assert wall is not None
    assert after.state in (ProcessState.UNSCHEDULED_PENDING, ProcessState.DIED_REQUESTED)
    if wall > NOW:
        assert after.state is ProcessState.UNSCHEDULED_PENDING
        assert after.not_before is not None
        assert after.not_before >= wall
