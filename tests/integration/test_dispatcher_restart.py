"""restart_mode and the restart policy (backoff, cap, reset, max_attempts), with real exits.

Each process appends a line per start to a file (its round, or the time), so the OS, not
the dispatcher's bookkeeping, says how often and when it started.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.errors import InvalidRequest

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def corral(start_corral) -> Iterator:
    with start_corral() as corral:
        yield corral


def policy(**settings) -> dict:
    return {"corral": {"restart": settings}}


def gaps_between_starts(path: Path) -> list[float]:
    times = [float(line) for line in path.read_text().split()]
    return [b - a for a, b in itertools.pairwise(times)]


def test_restart_mode_never_leaves_a_failed_process_failed(corral, tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    upid = corral.run(f'echo x >> "{starts}"; exit 1', restart_mode="NEVER")
    ended = corral.wait_end(upid)
    assert (ended["state"], ended["round"], ended["starts"]) == ("850-FAILED", 1, 1)
    time.sleep(0.3)  # proving a negative: no restart follows
    assert corral.describe(upid)["round"] == 1
    assert corral.lines(starts) == ["x"]


def test_restart_mode_abnormal_is_the_default_and_restarts_after_a_non_zero_exit(
    corral, tmp_path: Path
) -> None:
    starts = tmp_path / "starts"
    # round 1 exits 1, round 2 exits 0
    upid = corral.run(f'echo "$CORRAL_ROUND" >> "{starts}"; [ "$CORRAL_ROUND" != 1 ]')
    assert corral.describe(upid)["restart_mode"] == "ABNORMAL"
    ended = corral.wait_state(upid, "800-EXITED")
    assert (ended["round"], ended["starts"], ended["exit_code"]) == (2, 2, 0)
    assert corral.lines(starts) == ["1", "2"]


def test_restart_mode_abnormal_restarts_after_a_signal(corral, tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    upid = corral.run(
        f'echo "$CORRAL_ROUND" >> "{starts}"; [ "$CORRAL_ROUND" = 1 ] && kill -KILL $$; exit 0',
        restart_mode="ABNORMAL",
    )
    ended = corral.wait_state(upid, "800-EXITED")
    assert (ended["round"], ended["starts"]) == (2, 2)
    assert corral.lines(starts) == ["1", "2"]


def test_restart_mode_abnormal_does_not_restart_after_exit_0(corral, tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    upid = corral.run(f'echo x >> "{starts}"; exit 0', restart_mode="ABNORMAL")
    ended = corral.wait_end(upid)
    assert (ended["state"], ended["round"], ended["starts"]) == ("800-EXITED", 1, 1)
    time.sleep(0.3)  # proving a negative: no restart follows
    assert corral.describe(upid)["round"] == 1
    assert corral.lines(starts) == ["x"]


def test_restart_mode_always_restarts_after_exit_0_too(corral, tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    # rounds 1 and 2 exit 0; round 3 stays up
    upid = corral.run(
        f'echo "$CORRAL_ROUND" >> "{starts}"; [ "$CORRAL_ROUND" -lt 3 ] && exit 0; '
        "while :; do sleep 0.1; done",
        restart_mode="ALWAYS",
        configuration=policy(backoff_initial=0.1),
    )
    running = corral.wait_state(upid, "500-RUNNING", round_=3)
    assert running["starts"] == 3
    assert corral.lines(starts) == ["1", "2", "3"]
    corral.client.terminate_process(upid)
    assert corral.client.wait_process(upid, ["TERMINATED"])["state"] == "700-TERMINATED"
    time.sleep(0.3)  # proving a negative: a terminated process is not restarted
    assert corral.describe(upid)["round"] == 3


def test_restarts_back_off_exponentially_and_max_attempts_ends_in_failed_with_the_reason(
    corral, tmp_path: Path
) -> None:
    starts = tmp_path / "starts"
    upid = corral.run(
        f'date +%s.%N >> "{starts}"; exit 1',
        configuration=policy(backoff_initial=0.2, healthy_after=5, max_attempts=4),
    )
    ended = corral.wait_state(upid, "850-FAILED")
    # the first start and 4 restarts, then it gives up
    assert (ended["round"], ended["starts"]) == (5, 5)
    assert ended["restart_attempts"] == 4
    reason = ended["end_reason"]
    assert "gave up" in reason
    assert "4 restart" in reason
    gaps = gaps_between_starts(starts)
    assert len(gaps) == 4
    # nominal delays 0, 0.2, 0.4, 0.8 s with ±20 % jitter; loose bounds for a busy machine
    assert gaps[0] < 0.15, gaps
    assert 0.15 <= gaps[1] < 1.0, gaps
    assert 0.3 <= gaps[2] < 1.5, gaps
    assert 0.6 <= gaps[3] < 2.5, gaps
    assert gaps[1] < gaps[2] < gaps[3], gaps


def test_the_restart_backoff_is_capped_by_backoff_max(corral, tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    upid = corral.run(
        f'date +%s.%N >> "{starts}"; exit 1',
        configuration=policy(backoff_initial=0.2, backoff_max=0.25, jitter=0, max_attempts=5),
    )
    assert corral.wait_state(upid, "850-FAILED")["starts"] == 6
    gaps = gaps_between_starts(starts)
    # uncapped, the last gap would be 0.2 * 2**3 = 1.6 s
    assert all(gap < 0.6 for gap in gaps), gaps
    assert gaps[-1] >= 0.2, gaps


def test_a_healthy_run_resets_the_restart_count(corral, tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    # every round runs 0.5 s (healthy after 0.3 s) and fails; round 4 stays up. Without
    # the reset, max_attempts=1 would end it after the first restart.
    upid = corral.run(
        f'echo "$CORRAL_ROUND" >> "{starts}"; [ "$CORRAL_ROUND" -ge 4 ] && exec sleep 60; '
        "sleep 0.5; exit 1",
        configuration=policy(healthy_after=0.3, max_attempts=1, backoff_initial=5),
    )
    running = corral.wait_state(upid, "500-RUNNING", round_=4)
    assert running["starts"] == 4
    assert corral.lines(starts) == ["1", "2", "3", "4"]
    corral.client.terminate_process(upid)
    corral.client.wait_process(upid, ["TERMINATED"])


def test_max_attempts_0_never_restarts(corral) -> None:
    upid = corral.run("exit 1", restart_mode="ALWAYS", configuration=policy(max_attempts=0))
    ended = corral.wait_end(upid)
    assert (ended["state"], ended["round"], ended["starts"]) == ("850-FAILED", 1, 1)
    assert "gave up" in ended["end_reason"]


def test_terminate_process_stops_a_process_waiting_out_its_backoff(corral) -> None:
    upid = corral.run("exit 1", configuration=policy(backoff_initial=30))
    # the first restart is immediate, the second waits 30 s
    waiting = corral.wait_state(upid, "150-UNSCHEDULED_PENDING", round_=3)
    assert "restarting in" in waiting["waiting_reason"]
    terminated = corral.client.terminate_process(upid)
    assert terminated["state"] == "700-TERMINATED"
    assert corral.describe(upid)["starts"] == 2


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"backoff_initial": -1}, "configuration.corral.restart.backoff_initial"),
        ({"backoff_multiplier": 0.5}, "configuration.corral.restart.backoff_multiplier"),
        ({"jitter": 2}, "configuration.corral.restart.jitter"),
        ({"max_attempts": "3"}, "configuration.corral.restart.max_attempts"),
        ({"max_attempts": 1.5}, "configuration.corral.restart.max_attempts"),
        ({"healthy_after": "soon"}, "configuration.corral.restart.healthy_after"),
        ({"retries": 3}, "configuration.corral.restart.retries"),
    ],
)
def test_a_bad_restart_setting_is_an_invalid_request_naming_the_field(
    corral, settings: dict, field: str
) -> None:
    definition = corral.define("exit 0")
    upid = corral.unique("bad-policy")
    with pytest.raises(InvalidRequest) as caught:
        corral.client.schedule_process(upid, definition, configuration=policy(**settings))
    assert caught.value.field == field
    assert field in caught.value.message
    assert upid not in {p["upid"] for p in corral.client.describe_processes()}


def test_a_restart_section_that_is_not_an_object_is_an_invalid_request(corral) -> None:
    with pytest.raises(InvalidRequest) as caught:
        corral.client.schedule_process(
            corral.unique("bad-policy"),
            corral.define("exit 0"),
            configuration={"corral": {"restart": 3}},
        )
    assert caught.value.field == "configuration.corral.restart"
