"""Launch-ahead (issue 2): a node whose slots are all busy holds up to ``launch_ahead``
committed launches, and its agent starts them itself, in order, as slots free.

Every process appends its upid to a start file when it starts, and most block on a gate
of their own, so what ran, and in which order, is counted by the OS.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.errors import CorralError

pytestmark = pytest.mark.timeout(30)

_ENGINE = """
[[engines]]
id = "default"
allow_root = true  # the tests may run as root
slots = {slots}
launch_ahead = {ahead}
base_need = {nodes}
maximum_vms = {nodes}
heartbeat_period = 0.2
heartbeat_warning = 1.0
heartbeat_missing = 2.0
terminate_grace = 1.0
"""
ONE_NODE = _ENGINE.format(slots=2, ahead=2, nodes=1)
TWO_NODES = _ENGINE.format(slots=1, ahead=1, nodes=2)

RECORD_START = 'echo "$CORRAL_UPID $CORRAL_ROUND" >> "$STARTS"'
BLOCK = f'{RECORD_START}; while [ ! -e "$GATE" ]; do sleep 0.02; done'


@pytest.fixture(scope="module")
def shared(start_corral) -> Iterator:
    with start_corral(ONE_NODE) as corral:
        yield corral


@pytest.fixture
def corral(shared) -> Iterator:
    yield shared
    shared.stop_all()


class Run:
    """Processes of one test: their start file, and a gate each."""

    def __init__(self, corral, tmp_path: Path) -> None:
        self.corral = corral
        self.tmp_path = tmp_path
        self.starts = tmp_path / "starts"

    def block(self, name: str, **schedule) -> str:
        """Schedule a process that records its start and runs until ``open(name)``."""
        env = {"STARTS": self.starts, "GATE": self.tmp_path / f"{name}.gate"}
        return self.corral.run(BLOCK, upid=self.corral.unique(name), env=env, **schedule)

    def quick(self, name: str, **schedule) -> str:
        env = {"STARTS": self.starts}
        return self.corral.run(RECORD_START, upid=self.corral.unique(name), env=env, **schedule)

    def open(self, name: str) -> None:
        (self.tmp_path / f"{name}.gate").touch()

    def started(self) -> list[str]:
        """The upids started, in order."""
        return [line.split()[0] for line in self.corral.lines(self.starts)]

    def wait_started(self, upids: list[str]) -> None:
        """Wait until exactly ``upids`` have started, in this order (a process reported
        RUNNING may not have written its line yet)."""
        self.corral.wait_until(lambda: self.started() == upids, f"{upids} to have started")

    def rounds_started(self, upid: str) -> list[int]:
        return [
            int(r)
            for u, r in (line.split() for line in self.corral.lines(self.starts))
            if u == upid
        ]

    def running(self, name: str) -> dict:
        return self.corral.wait_state(self.named(name), "500-RUNNING")

    def named(self, name: str) -> str:
        (upid,) = [p["upid"] for p in self.corral.client.describe_processes() if name in p["upid"]]
        return upid

    def queued(self, upid: str) -> dict:
        """Wait until ``upid`` is PENDING (durably: wait_process answers after the commit)."""
        record = self.corral.client.wait_process(upid, ["PENDING"], timeout=self.corral.DEADLINE)
        assert record["state"] == "400-PENDING", record
        return record


def test_queued_launches_start_in_the_order_received_and_never_beyond_the_slots(
    corral, tmp_path: Path
) -> None:
    run = Run(corral, tmp_path)
    (node,) = corral.ready_nodes()
    first, second = run.block("first"), run.block("second")
    corral.wait_state(first, "500-RUNNING")
    corral.wait_state(second, "500-RUNNING")
    third, fourth = run.block("third"), run.block("fourth")
    for upid in (third, fourth):
        record = run.queued(upid)
        # truthful: PENDING on its node, not waiting for a placement
        assert (record["assigned"], record["waiting_reason"]) == (node["node_id"], None)
    # the launch-ahead spots are taken: the next one waits for the dispatcher
    fifth = run.quick("fifth")
    assert "no free slot" in corral.wait_state(fifth, "300-WAITING")["waiting_reason"]

    run.open("first")
    corral.wait_state(third, "500-RUNNING")
    assert corral.describe(fourth)["state"] == "400-PENDING"
    run.wait_started([first, second, third])
    run.open("second")
    corral.wait_state(fourth, "500-RUNNING")
    run.wait_started([first, second, third, fourth])
    run.open("third")
    assert corral.wait_end(fifth)["state"] == "800-EXITED"
    assert run.started() == [first, second, third, fourth, fifth]


def test_a_process_that_may_not_wait_is_rejected_though_a_launch_ahead_spot_is_free(
    corral, tmp_path: Path
) -> None:
    run = Run(corral, tmp_path)
    for name in ("a", "b"):
        corral.wait_state(run.block(name), "500-RUNNING")
    never = run.quick("never", queueing_mode="NEVER")
    assert corral.wait_end(never)["state"] == "900-REJECTED"
    run.open("a")
    run.open("b")


def test_terminating_a_queued_process_drops_its_launch_and_it_never_runs(
    corral, tmp_path: Path
) -> None:
    run = Run(corral, tmp_path)
    blockers = [run.block(name) for name in ("a", "b")]
    for upid in blockers:
        corral.wait_state(upid, "500-RUNNING")
    queued = run.quick("queued")
    run.queued(queued)
    corral.client.terminate_process(queued)
    ended = corral.wait_end(queued)
    assert (ended["state"], ended["end_reason"]) == ("700-TERMINATED", "terminated before it ran")
    run.open("a")
    run.open("b")
    # once a later process has had a free slot, the dropped launch can no longer start
    later = run.quick("later")
    assert corral.wait_end(later)["state"] == "800-EXITED"
    assert queued not in run.started()


def test_restarting_a_queued_process_runs_it_once_in_its_new_round(corral, tmp_path: Path) -> None:
    run = Run(corral, tmp_path)
    for name in ("a", "b"):
        corral.wait_state(run.block(name), "500-RUNNING")
    queued = run.quick("queued", restart_mode="NEVER")
    before = run.queued(queued)
    corral.client.restart_process(queued)
    after = corral.wait_state(queued, "400-PENDING", round_=before["round"] + 1)
    # The agent obeys in order: once it answered this, it has had the old round's Kill (a
    # slot freeing while that Kill is on its way would start and then kill the old round).
    with contextlib.suppress(CorralError):
        corral.client.read_log(queued)
    run.open("a")
    ended = corral.wait_end(queued)
    assert (ended["state"], ended["round"]) == ("800-EXITED", after["round"])
    assert run.rounds_started(queued) == [after["round"]]
    run.open("b")


def test_a_launch_queued_ahead_moves_to_a_slot_that_frees_on_another_node(
    start_corral, tmp_path: Path
) -> None:
    with start_corral(TWO_NODES) as corral:
        run = Run(corral, tmp_path)
        on = {}
        for name in ("a", "b"):
            upid = run.block(name)
            on[corral.wait_state(upid, "500-RUNNING")["assigned"]] = name
        queued = run.quick("queued")
        held_by = run.queued(queued)["assigned"]
        (other,) = set(on) - {held_by}
        run.open(on[other])  # a slot frees on the node that does not hold the launch
        ended = corral.wait_end(queued)
        assert (ended["state"], ended["assigned"]) == ("800-EXITED", other)
        assert run.started().count(queued) == 1
        assert corral.describe(run.named(on[held_by]))["state"] == "500-RUNNING"
        corral.stop_all()


def test_launches_queued_on_a_lost_node_are_placed_again_on_its_replacement(
    start_corral, tmp_path: Path
) -> None:
    with start_corral(ONE_NODE) as corral:
        run = Run(corral, tmp_path)
        (node,) = corral.ready_nodes()
        for name in ("a", "b"):
            corral.wait_state(run.block(name, restart_mode="NEVER"), "500-RUNNING")
        queued = [run.quick(f"queued-{i}") for i in range(2)]
        for upid in queued:
            run.queued(upid)
        os.kill(corral.agent_pid(node["node_id"]), signal.SIGKILL)
        for upid in queued:
            ended = corral.wait_end(upid)
            assert ended["state"] == "800-EXITED", ended
            assert ended["assigned"] != node["node_id"]
            assert run.started().count(upid) == 1


ELASTIC = """
[[engines]]
id = "default"
allow_root = true  # the tests may run as root
slots = 1
launch_ahead = 1
base_need = 1
maximum_vms = 3
idle_timeout = 1.0
heartbeat_period = 0.2
heartbeat_warning = 1.0
heartbeat_missing = 2.0
terminate_grace = 1.0
"""


def test_a_launch_queued_ahead_is_not_overtaken_when_the_pool_grows(
    start_corral, tmp_path: Path
) -> None:
    # The second process queues behind the first on the only node, which runs until its
    # gate opens; the pool grows for it and for the third, and a new node's slot goes to it
    # before the third, which was placed after it.
    with start_corral(ELASTIC) as corral:
        run = Run(corral, tmp_path)
        upids = [run.block(name) for name in ("first", "second", "third", "fourth")]
        running = [corral.wait_state(u, "500-RUNNING") for u in upids[:3]]
        assert len({r["assigned"] for r in running}) == 3
        assert running[1]["round"] == 2  # withdrawn from the first node, placed again
        corral.wait_until(lambda: sorted(run.started()) == sorted(upids[:3]), "three starts")
        # at maximum_vms, the youngest queues behind one of them
        assert run.queued(upids[3])["waiting_reason"] is None
        for name in ("first", "second", "third", "fourth"):
            run.open(name)
        for upid in upids:
            assert corral.wait_end(upid)["state"] == "800-EXITED"
        assert sorted(run.started()) == sorted(upids)
