"""The agent's queue of launches: never more than ``slots`` running, oldest first."""

from __future__ import annotations

from corral.wire.launch_queue import LaunchQueue
from corral.wire.messages import Launch


def launch(upid: str, round_: int = 1) -> Launch:
    return Launch(upid, round_, "/bin/true", [], {}, None, "{}")


def test_queued_launches_start_in_the_order_received_while_a_slot_is_free() -> None:
    queue = LaunchQueue(slots=2)
    for upid in "abc":
        queue.add(launch(upid))
    started = []
    running = 0
    while (next_launch := queue.next_due(running)) is not None:
        started.append(next_launch.upid)
        running += 1
    assert started == ["a", "b"]
    assert queue.next_due(running=1) == launch("c")
    assert queue.next_due(running=0) is None


def test_a_repeated_launch_is_queued_once() -> None:
    queue = LaunchQueue(slots=1)
    queue.add(launch("a"))
    queue.add(launch("a"))
    assert len(queue) == 1


def test_a_dropped_launch_never_starts_and_is_reported_not_started() -> None:
    queue = LaunchQueue(slots=1)
    queue.add(launch("a"))
    queue.add(launch("b", 2))
    report = queue.drop(("b", 2))
    assert report is not None
    assert (report.upid, report.round, report.status, report.pid) == ("b", 2, "not_started", None)
    assert queue.drop(("b", 2)) is None
    assert [r.status for r in queue.reports()] == ["queued"]
    assert [r.upid for r in queue.drop_all()] == ["a"]
    assert queue.next_due(running=0) is None
