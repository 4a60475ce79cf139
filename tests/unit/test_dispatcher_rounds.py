"""How a round ends when its node is lost: a process that never started is placed again,
until max_dispatch_attempts placements in a row are lost; one that ran follows its
restart mode."""

from __future__ import annotations

from corral.core.ids import NodeId
from corral.core.model import ProcessRecord
from corral.core.process_states import ProcessState, RestartMode
from corral.core.restart import Outcome
from corral.dispatcher.rounds import assigned, ended, started
from corral.testing import process_record

LOST = "node n1 lost: no heartbeat"


def placed(dispatches_before: int) -> ProcessRecord:
    record = process_record(
        state=ProcessState.WAITING, restart_mode=RestartMode.NEVER, dispatches=dispatches_before
    )
    return assigned(record, NodeId("n1"), "host", "default", 1.0)


def test_a_lost_placement_goes_back_to_the_queue_whatever_the_restart_mode() -> None:
    record = placed(0)
    assert record.dispatches == 1
    again = ended(record, Outcome.NODE_LOST, 2.0, 0.5, reason=LOST, max_dispatch_attempts=3)
    assert again.state is ProcessState.DIED_REQUESTED
    assert again.round == record.round + 1
    assert again.assigned is None
    assert again.dispatches == 1
    assert "dispatching again (1 of 3" in (again.waiting_reason or "")


def test_too_many_lost_placements_fail_the_process_with_the_reason() -> None:
    record = placed(2)
    failed = ended(record, Outcome.NODE_LOST, 2.0, 0.5, reason=LOST, max_dispatch_attempts=3)
    assert failed.state is ProcessState.FAILED
    assert failed.end_reason == (
        f"{LOST}; gave up after 3 dispatch attempt(s) (max_dispatch_attempts)"
    )


def test_a_start_resets_the_count_and_a_lost_running_process_follows_its_restart_mode() -> None:
    running = started(placed(2), 42, 1.5, 1.5)
    assert running.dispatches == 0
    lost = ended(running, Outcome.NODE_LOST, 3.0, 0.5, reason=LOST, max_dispatch_attempts=3)
    assert lost.state is ProcessState.FAILED  # restart_mode NEVER
    assert lost.end_reason == LOST
