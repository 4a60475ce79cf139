"""terminate_process: queued processes end at once; running ones get SIGTERM on their whole
process group, then SIGKILL after the engine's terminate_grace (1 s here)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from corral.store import Change, Put
from corral.store.sqlite import SQLiteStore
from corral.testing.dispatcher import open_test_dispatcher
from corral.testing.serve import wait_until

pytestmark = pytest.mark.timeout(30)

GRACE = 1.0


@pytest.fixture(scope="module")
def corral(start_corral) -> Iterator:
    with start_corral() as corral:
        yield corral


def pids_in(corral, path: Path, count: int) -> list[int]:
    lines = corral.wait_until(
        lambda: len(corral.lines(path)) >= count and corral.lines(path), f"{count} pid(s)"
    )
    return [int(line) for line in lines]


def test_terminating_a_waiting_process_makes_it_terminated_at_once(corral) -> None:
    upid = corral.run("exit 0", constraints={"zone": "nowhere"})
    corral.wait_state(upid, "300-WAITING")
    terminated = corral.client.terminate_process(upid)
    assert terminated["state"] == "700-TERMINATED"
    assert terminated["starts"] == 0
    assert terminated["waiting_reason"] is None
    assert corral.describe(upid)["state"] == "700-TERMINATED"


def test_terminating_an_unscheduled_process_makes_it_terminated(corral) -> None:
    corral.client.create_process("unscheduled", corral.define("exit 0"))
    assert corral.client.terminate_process("unscheduled")["state"] == "700-TERMINATED"


def test_a_running_process_that_exits_on_sigterm_is_terminated(corral) -> None:
    upid = corral.run(
        "trap 'echo got TERM; exit 0' TERM; echo ready; while :; do sleep 0.05; done",
        restart_mode="ALWAYS",
    )
    running = corral.wait_state(upid, "500-RUNNING")
    corral.wait_until(lambda: corral.client.read_log(upid)["data"] == "ready\n", "the trap set")
    asked = time.monotonic()
    assert corral.client.terminate_process(upid)["state"] in ("600-TERMINATING", "700-TERMINATED")
    ended = corral.client.wait_process(upid, ["TERMINATED"])
    took = time.monotonic() - asked
    assert ended["state"] == "700-TERMINATED"
    assert ended["round"] == 1
    assert took < GRACE, "a process that exits on SIGTERM needs no SIGKILL"
    assert "got TERM" in corral.client.read_log(upid)["data"]
    assert not corral.pid_alive(running["pid"])
    time.sleep(0.3)  # proving a negative: restart_mode ALWAYS does not restart it
    assert corral.describe(upid)["round"] == 1


def test_a_process_ignoring_sigterm_is_killed_with_its_process_group_after_the_grace(
    corral, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    upid = corral.run(
        'trap \'\' TERM; sleep 600 & echo $! >> "$PIDS"; echo $$ >> "$PIDS"; '
        "while :; do sleep 0.05; done",
        env={"PIDS": pids},
    )
    corral.wait_state(upid, "500-RUNNING")
    grandchild, leader = pids_in(corral, pids, 2)
    assert corral.pid_alive(grandchild)
    asked = time.monotonic()
    assert corral.client.terminate_process(upid)["state"] == "600-TERMINATING"
    time.sleep(GRACE / 2)  # proving a negative: SIGTERM alone does not stop it
    assert corral.describe(upid)["state"] == "600-TERMINATING"
    assert corral.pid_alive(leader)
    ended = corral.client.wait_process(upid, ["TERMINATED"], timeout=10)
    took = time.monotonic() - asked
    assert ended["state"] == "700-TERMINATED"
    assert took >= GRACE * 0.9
    assert ended["signal"] == signal.SIGKILL
    corral.wait_until(lambda: not corral.pid_alive(leader), "the leader to be gone")
    corral.wait_until(lambda: not corral.pid_alive(grandchild), "the grandchild to be gone")


def test_a_grandchild_left_behind_by_an_exiting_process_is_killed(corral, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    upid = corral.run('sleep 600 & echo $! >> "$PIDS"; exit 0', env={"PIDS": pids})
    assert corral.wait_end(upid)["state"] == "800-EXITED"
    (grandchild,) = pids_in(corral, pids, 1)
    corral.wait_until(lambda: not corral.pid_alive(grandchild), "the straggler to be gone")


def test_terminating_a_finished_process_changes_nothing(corral) -> None:
    upid = corral.run("exit 0")
    ended = corral.wait_end(upid)
    again = corral.client.terminate_process(upid)
    assert (again["state"], again["round"]) == (ended["state"], ended["round"])


def test_terminating_twice_is_harmless(corral) -> None:
    upid = corral.run("while :; do sleep 0.05; done")
    corral.wait_state(upid, "500-RUNNING")
    corral.client.terminate_process(upid)
    second = corral.client.terminate_process(upid)
    assert second["state"] in ("600-TERMINATING", "700-TERMINATED")
    assert corral.client.wait_process(upid, ["TERMINATED"])["state"] == "700-TERMINATED"


def test_a_process_terminated_while_its_placement_commits_never_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Terminate lands after the mapper placed the process but before that commit is durable
    (so before the launch is sent): the process ends TERMINATED without ever starting."""
    placed = threading.Event()
    gate = threading.Event()
    apply = SQLiteStore.apply

    def gated_apply(store: SQLiteStore, changes: Sequence[Change]) -> None:
        if any(isinstance(c, Put) and c.key == "victim" and c.doc["state"] == 400 for c in changes):
            placed.set()
            gate.wait(10)
        apply(store, changes)

    monkeypatch.setattr(SQLiteStore, "apply", gated_apply)
    with open_test_dispatcher(home=tmp_path / "home") as corral:
        client = corral.client
        wait_until(lambda: client.list_nodes() and client.list_nodes()[0]["connected"], "a node")
        client.create_definition("true", "exec", {"exec": "/bin/true"})
        with ThreadPoolExecutor(2) as pool:
            # The placement commits with the schedule itself, so that answers at the gate too.
            scheduling = pool.submit(client.schedule_process, "victim", "true")
            assert placed.wait(10)
            # Its commit queues behind the gated one, so it answers once the gate opens.
            terminating = pool.submit(client.terminate_process, "victim")
            time.sleep(0.2)
            gate.set()
            assert scheduling.result(10)["upid"] == "victim"
            assert terminating.result(10)["state"] == "600-TERMINATING"
        ended = client.wait_process("victim", ["TERMINATED"], timeout=10)
        assert ended["state"] == "700-TERMINATED"
        assert ended["starts"] == 0
        assert ended["pid"] is None
        assert ended["end_reason"] == "terminated before it ran"
