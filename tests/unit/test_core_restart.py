"""The restart policy: backoff, the restart decision, and reading it from a configuration."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.core.process_states import RestartMode
from corral.core.restart import Outcome, RestartPolicy, backoff_delay, decide
from corral.errors import InvalidRequest

#: ``rand`` that cancels the jitter: 1 + jitter * (2 * 0.5 - 1) == 1
MID = 0.5

policies = st.builds(
    RestartPolicy,
    backoff_initial=st.floats(0, 1e6, allow_nan=False),
    backoff_multiplier=st.floats(1, 1e9, allow_nan=False),
    backoff_max=st.floats(0, 1e6, allow_nan=False),
    jitter=st.floats(0, 1),
    max_attempts=st.none() | st.integers(0, 20),
    healthy_after=st.floats(0, 1e4, allow_nan=False),
)
rands = st.floats(0, 1, exclude_max=True)


# -- backoff -----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(policies, st.integers(1, 10_000), rands)
def test_backoff_never_exceeds_backoff_max(policy, attempt, rand):
    delay = backoff_delay(policy, attempt, rand)
    assert 0.0 <= delay <= policy.backoff_max
    assert math.isfinite(delay)


def test_backoff_stays_at_its_cap_for_a_huge_multiplier_and_many_attempts():
    # 1e6 ** 64 overflows a float; the delay must still be the cap, not an exception
    policy = RestartPolicy(backoff_multiplier=1e6, jitter=0.0)
    assert backoff_delay(policy, 200, MID) == policy.backoff_max


def test_backoff_of_zero_initial_delay_stays_zero_however_it_grows():
    policy = RestartPolicy(backoff_initial=0.0, backoff_multiplier=1e6)
    assert backoff_delay(policy, 500, MID) == 0.0


@settings(max_examples=100, deadline=None)
@given(policies, rands)
def test_the_first_restart_after_a_healthy_run_is_immediate(policy, rand):
    assert backoff_delay(policy, 1, rand) == 0.0


def test_backoff_grows_exponentially_from_the_second_restart():
    policy = RestartPolicy(backoff_initial=0.5, backoff_multiplier=2.0, backoff_max=100.0)
    delays = [backoff_delay(policy, attempt, MID) for attempt in range(1, 8)]
    assert delays == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0]


def test_backoff_levels_off_at_backoff_max():
    policy = RestartPolicy(backoff_initial=1.0, backoff_multiplier=3.0, backoff_max=10.0)
    assert [backoff_delay(policy, a, MID) for a in (3, 4, 5, 50)] == [3.0, 9.0, 10.0, 10.0]


@settings(max_examples=200, deadline=None)
@given(
    st.floats(0.01, 100),
    st.floats(1, 4),
    st.floats(0, 1),
    st.integers(2, 12),
    rands,
)
def test_jitter_moves_the_delay_by_at_most_its_fraction(initial, multiplier, jitter, attempt, rand):
    policy = RestartPolicy(
        backoff_initial=initial,
        backoff_multiplier=multiplier,
        backoff_max=math.inf,
        jitter=jitter,
    )
    base = backoff_delay(policy, attempt, MID)
    delay = backoff_delay(policy, attempt, rand)
    assert base * (1 - jitter) - 1e-9 <= delay <= base * (1 + jitter) + 1e-9


def test_jitter_spreads_delays_both_ways():
    policy = RestartPolicy(backoff_initial=10.0, backoff_max=100.0, jitter=0.2)
    assert backoff_delay(policy, 2, 0.0) == pytest.approx(8.0)
    assert backoff_delay(policy, 2, 0.999999) == pytest.approx(12.0, rel=1e-5)


# -- decide ------------------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", list(Outcome))
def test_restart_mode_never_never_restarts(outcome):
    decision = decide(RestartMode.NEVER, outcome, RestartPolicy(), 0, 100.0, MID)
    assert not decision.restart
    assert not decision.gave_up


def test_abnormal_does_not_restart_after_a_clean_exit():
    decision = decide(RestartMode.ABNORMAL, Outcome.EXITED_OK, RestartPolicy(), 2, 1.0, MID)
    assert not decision.restart
    assert decision.attempts == 2
    assert decision.reason == "exited normally"


@pytest.mark.parametrize("outcome", [Outcome.FAILED, Outcome.NODE_LOST])
def test_abnormal_restarts_after_a_failure_or_a_lost_node(outcome):
    assert decide(RestartMode.ABNORMAL, outcome, RestartPolicy(), 0, 1.0, MID).restart


def test_always_restarts_even_after_exit_zero():
    decision = decide(RestartMode.ALWAYS, Outcome.EXITED_OK, RestartPolicy(), 0, 1.0, MID)
    assert decision.restart
    assert decision.attempts == 1


def test_a_healthy_run_resets_the_attempts_and_restarts_at_once():
    policy = RestartPolicy(healthy_after=10.0, max_attempts=3)
    decision = decide(RestartMode.ALWAYS, Outcome.FAILED, policy, 3, 10.0, MID)
    assert decision.restart
    assert decision.attempts == 1
    assert decision.delay == 0.0


def test_quick_failures_count_up_and_wait_longer():
    policy = RestartPolicy(backoff_initial=1.0, backoff_multiplier=2.0, jitter=0.0)
    attempts, delays = 0, []
    for _ in range(4):
        decision = decide(RestartMode.ALWAYS, Outcome.FAILED, policy, attempts, 0.1, MID)
        attempts = decision.attempts
        delays.append(decision.delay)
    assert attempts == 4
    assert delays == [0.0, 1.0, 2.0, 4.0]


def test_max_attempts_gives_up_with_gave_up_set():
    policy = RestartPolicy(max_attempts=2, healthy_after=10.0)
    first = decide(RestartMode.ALWAYS, Outcome.FAILED, policy, 0, 0.1, MID)
    second = decide(RestartMode.ALWAYS, Outcome.FAILED, policy, first.attempts, 0.1, MID)
    third = decide(RestartMode.ALWAYS, Outcome.FAILED, policy, second.attempts, 0.1, MID)
    assert (first.restart, second.restart, third.restart) == (True, True, False)
    assert third.gave_up
    assert third.attempts == 2
    assert "gave up after 2 restart(s)" in third.reason


def test_max_attempts_zero_never_restarts_but_says_it_gave_up():
    decision = decide(
        RestartMode.ALWAYS, Outcome.FAILED, RestartPolicy(max_attempts=0), 0, 0.1, MID
    )
    assert not decision.restart
    assert decision.gave_up


@settings(max_examples=200, deadline=None)
@given(
    policies,
    st.sampled_from(list(RestartMode)),
    st.sampled_from(list(Outcome)),
    st.integers(0, 50),
    st.floats(0, 1e5, allow_nan=False),
    rands,
)
def test_a_decision_restarts_only_within_max_attempts_and_under_the_cap(
    policy, mode, outcome, attempts, ran_for, rand
):
    decision = decide(mode, outcome, policy, attempts, ran_for, rand)
    assert 0.0 <= decision.delay <= policy.backoff_max
    if decision.restart:
        assert policy.max_attempts is None or decision.attempts <= policy.max_attempts
        assert decision.attempts >= 1
    assert not (decision.restart and decision.gave_up)
    if decision.gave_up:
        assert mode is not RestartMode.NEVER


# -- from_configuration ------------------------------------------------------------------------


def test_a_configuration_without_a_restart_section_gives_the_defaults():
    assert RestartPolicy.from_configuration({}) == RestartPolicy()
    assert RestartPolicy.from_configuration({"corral": {"other": 1}}) == RestartPolicy()
    assert RestartPolicy.from_configuration({"app": {"restart": {"x": 1}}}) == RestartPolicy()


def test_from_configuration_reads_corral_restart():
    policy = RestartPolicy.from_configuration(
        {
            "corral": {
                "restart": {
                    "backoff_initial": 1,
                    "backoff_multiplier": 3,
                    "backoff_max": 60.0,
                    "jitter": 0,
                    "max_attempts": 5,
                    "healthy_after": 30,
                }
            }
        }
    )
    assert policy == RestartPolicy(1.0, 3.0, 60.0, 0.0, 5, 30.0)
    assert isinstance(policy.backoff_initial, float)


def test_max_attempts_may_be_null():
    policy = RestartPolicy.from_configuration({"corral": {"restart": {"max_attempts": None}}})
    assert policy.max_attempts is None


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"retries": 3}, "configuration.corral.restart.retries"),
        ({"backoff_max": -1}, "configuration.corral.restart.backoff_max"),
        ({"backoff_initial": "1s"}, "configuration.corral.restart.backoff_initial"),
        ({"healthy_after": None}, "configuration.corral.restart.healthy_after"),
        ({"jitter": True}, "configuration.corral.restart.jitter"),
        ({"jitter": 1.5}, "configuration.corral.restart.jitter"),
        ({"jitter": math.nan}, "configuration.corral.restart.jitter"),
        ({"backoff_max": math.nan}, "configuration.corral.restart.backoff_max"),
        ({"backoff_multiplier": 0.5}, "configuration.corral.restart.backoff_multiplier"),
        ({"max_attempts": 1.5}, "configuration.corral.restart.max_attempts"),
        ({"max_attempts": -1}, "configuration.corral.restart.max_attempts"),
        ({"max_attempts": True}, "configuration.corral.restart.max_attempts"),
        ({"max_attempts": "3"}, "configuration.corral.restart.max_attempts"),
        ([1, 2], "configuration.corral.restart"),
        ("fast", "configuration.corral.restart"),
    ],
)
def test_a_bad_restart_setting_is_refused_naming_its_field(section, field):
    with pytest.raises(InvalidRequest) as caught:
        RestartPolicy.from_configuration({"corral": {"restart": section}})
    assert caught.value.field == field
    assert field in caught.value.message


def test_an_unknown_restart_setting_lists_the_known_ones():
    with pytest.raises(InvalidRequest, match="expected one of backoff_initial, backoff_max"):
        RestartPolicy.from_configuration({"corral": {"restart": {"retries": 3}}})
