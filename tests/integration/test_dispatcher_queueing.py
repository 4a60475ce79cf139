"""queueing_mode, exactly as the EPU defines it, on one node with two slots (issue 2).

Each test first fills both slots with processes that block on a gate, so "no slot" is a
fact, not a race. A restart finds no slot when a process that waited before it takes the
slot its own exit freed: the queue is served in order. Launch-ahead is off
(``launch_ahead = 0``): a process that finds no slot waits in the dispatcher's queue
(``test_dispatcher_launch_ahead.py`` covers the queues of busy nodes).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(30)

TWO_SLOTS = """
[[engines]]
id = "default"
allow_root = true  # the tests may run as root
slots = 2
launch_ahead = 0
base_need = 1
maximum_vms = 1
heartbeat_period = 0.2
heartbeat_warning = 1.0
heartbeat_missing = 2.0
terminate_grace = 1.0
"""


@pytest.fixture(scope="module")
def shared(start_corral) -> Iterator:
    with start_corral(TWO_SLOTS) as corral:
        yield corral


@pytest.fixture
def corral(shared) -> Iterator:
    yield shared
    shared.stop_all()


def blocker(corral, gate: Path, **schedule) -> str:
    """A process that runs until ``gate`` exists, then exits 0; returns once it RUNS."""
    upid = corral.run(corral.WAIT_FOR_GATE, env={"GATE": gate}, **schedule)
    corral.wait_state(upid, "500-RUNNING")
    return upid


def fill(corral, gate: Path, slots: int = 2) -> list[str]:
    return [blocker(corral, gate) for _ in range(slots)]


def test_queueing_mode_never_rejects_a_process_when_no_slot_is_free(corral, gate: Path) -> None:
    fill(corral, gate)
    upid = corral.run("exit 0", queueing_mode="NEVER")
    ended = corral.wait_end(upid)
    assert ended["state"] == "900-REJECTED"
    assert ended["starts"] == 0
    assert "NEVER" in ended["end_reason"]
    assert "slot" in ended["end_reason"]


def test_queueing_mode_never_runs_a_process_when_a_slot_is_free(corral, gate: Path) -> None:
    blocker(corral, gate)
    upid = corral.run("exit 0", queueing_mode="NEVER")
    assert corral.wait_end(upid)["state"] == "800-EXITED"


def test_queueing_mode_always_waits_with_a_reason_and_runs_when_a_slot_frees(
    corral, gate: Path
) -> None:
    fill(corral, gate)
    upid = corral.run("exit 0", queueing_mode="ALWAYS")
    waiting = corral.wait_state(upid, "300-WAITING")
    reason = waiting["waiting_reason"]
    assert "no free slot" in reason
    assert "'default'" in reason
    assert waiting["starts"] == 0
    gate.touch()
    ended = corral.wait_end(upid)
    assert ended["state"] == "800-EXITED"
    assert ended["waiting_reason"] is None
    assert ended["starts"] == 1


def test_the_default_queueing_mode_is_always(corral, gate: Path) -> None:
    fill(corral, gate)
    upid = corral.run("exit 0")
    waiting = corral.wait_state(upid, "300-WAITING")
    assert waiting["queueing_mode"] == "ALWAYS"
    assert waiting["waiting_reason"]


def test_waiting_processes_get_freed_slots_in_the_order_they_were_scheduled(
    corral, tmp_path: Path
) -> None:
    fillers = [blocker(corral, tmp_path / f"filler-{i}") for i in range(2)]
    waiting = [corral.run(corral.WAIT_FOR_GATE, env={"GATE": tmp_path / "never"}) for _ in range(3)]
    for upid in waiting:
        corral.wait_state(upid, "300-WAITING")
    for i, filler in enumerate(fillers):
        (tmp_path / f"filler-{i}").touch()  # one slot frees: the first waiting one gets it
        assert corral.wait_end(filler)["state"] == "800-EXITED"
        corral.wait_state(waiting[i], "500-RUNNING")
        assert [corral.describe(u)["state"] for u in waiting[i + 1 :]] == ["300-WAITING"] * (
            len(waiting) - i - 1
        )


def test_queueing_mode_start_only_lets_a_first_start_wait(corral, gate: Path) -> None:
    fill(corral, gate)
    upid = corral.run("exit 0", queueing_mode="START_ONLY")
    assert corral.wait_state(upid, "300-WAITING")["waiting_reason"]
    gate.touch()
    assert corral.wait_end(upid)["state"] == "800-EXITED"


def test_queueing_mode_restart_only_rejects_a_first_start_without_a_slot(
    corral, gate: Path
) -> None:
    fill(corral, gate)
    upid = corral.run("exit 0", queueing_mode="RESTART_ONLY")
    ended = corral.wait_end(upid)
    assert ended["state"] == "900-REJECTED"
    assert ended["starts"] == 0
    assert "RESTART_ONLY" in ended["end_reason"]
    assert "first start" in ended["end_reason"]


def test_queueing_mode_start_only_rejects_a_restart_without_a_slot(corral, tmp_path: Path) -> None:
    blocker(corral, tmp_path / "filler")
    release = tmp_path / "release"
    upid = corral.run(
        corral.WAIT_FOR_GATE + "; exit 1",
        env={"GATE": release},
        queueing_mode="START_ONLY",
        restart_mode="ABNORMAL",
    )
    corral.wait_state(upid, "500-RUNNING")
    waiter = corral.run(corral.WAIT_FOR_GATE, env={"GATE": tmp_path / "waiter"})
    corral.wait_state(waiter, "300-WAITING")
    release.touch()  # the restart finds its slot taken by the waiter, first in the queue
    ended = corral.wait_end(upid)
    assert ended["state"] == "900-REJECTED"
    assert ended["round"] == 2
    assert ended["starts"] == 1
    assert "START_ONLY" in ended["end_reason"]
    assert "restart" in ended["end_reason"]
    assert corral.wait_state(waiter, "500-RUNNING")


def test_queueing_mode_restart_only_lets_a_restart_wait_and_runs_it_when_a_slot_frees(
    corral, tmp_path: Path
) -> None:
    filler = blocker(corral, tmp_path / "filler")
    release = tmp_path / "release"
    upid = corral.run(
        f'if [ "$CORRAL_ROUND" = 1 ]; then {corral.WAIT_FOR_GATE}; exit 1; fi; exit 0',
        env={"GATE": release},
        queueing_mode="RESTART_ONLY",
        restart_mode="ABNORMAL",
    )
    assert corral.wait_state(upid, "500-RUNNING")["round"] == 1
    waiter = corral.run(corral.WAIT_FOR_GATE, env={"GATE": tmp_path / "waiter"})
    corral.wait_state(waiter, "300-WAITING")
    release.touch()  # round 1 exits 1; the waiter takes the slot; the restart waits
    corral.wait_state(waiter, "500-RUNNING")
    waiting = corral.wait_state(upid, "300-WAITING", round_=2)
    assert "no free slot" in waiting["waiting_reason"]
    assert waiting["starts"] == 1
    (tmp_path / "filler").touch()
    assert corral.wait_end(filler)["state"] == "800-EXITED"
    ended = corral.wait_end(upid)
    assert (ended["state"], ended["round"], ended["starts"]) == ("800-EXITED", 2, 2)
