"""Heartbeats and node loss: an agent killed (SIGKILL) or frozen (SIGSTOP) loses its node;
the node's processes follow their restart modes on a new node, and nothing runs twice. A
process with a disconnect grace keeps its node through a freeze shorter than the grace.

Each test has its own dispatcher (it kills the node); heartbeats are 0.2 s, warning after
1 s and missing after 2 s of silence.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.dispatcher.syncer import Syncer
from corral.errors import Conflict

pytestmark = pytest.mark.timeout(30)

ONE_NODE = """
[[engines]]
id = "default"
allow_root = true  # the tests may run as root
slots = 4
launch_ahead = 0  # what finds no free slot waits in the dispatcher's queue
base_need = 1
maximum_vms = 1
heartbeat_period = 0.2
heartbeat_warning = 1.0
heartbeat_missing = 2.0
terminate_grace = 1.0
"""

FOREVER = 'echo $$ >> "$PIDS"; while :; do sleep 0.05; done'


@pytest.fixture
def corral(start_corral) -> Iterator:
    with start_corral(ONE_NODE) as corral:
        yield corral


def pids(corral, path: Path) -> list[int]:
    return [int(line) for line in corral.lines(path)]


def start(corral, tmp_path: Path, restart_mode: str, name: str = "") -> tuple[str, Path, dict]:
    """A process of ``restart_mode`` that runs until killed; returns it once RUNNING."""
    path = tmp_path / f"{name or restart_mode}.pids"
    upid = corral.run(FOREVER, env={"PIDS": path}, restart_mode=restart_mode)
    running = corral.wait_state(upid, "500-RUNNING")
    corral.wait_until(lambda: pids(corral, path), f"the pid of {upid}")
    return upid, path, running


def test_the_processes_of_a_killed_agent_follow_their_restart_modes_on_a_new_node(
    corral, tmp_path: Path
) -> None:
    (node,) = corral.ready_nodes()
    lost = node["node_id"]
    always, always_pids, always_before = start(corral, tmp_path, "ALWAYS")
    abnormal, abnormal_pids, abnormal_before = start(corral, tmp_path, "ABNORMAL")
    never, never_pids, never_before = start(corral, tmp_path, "NEVER")
    assert {r["assigned"] for r in (always_before, abnormal_before, never_before)} == {lost}

    os.kill(corral.agent_pid(lost), signal.SIGKILL)

    failed = corral.wait_state(never, "850-FAILED")
    assert failed["round"] == 1
    assert lost in failed["end_reason"]
    assert "lost" in failed["end_reason"]
    for upid, before in ((always, always_before), (abnormal, abnormal_before)):
        again = corral.wait_state(upid, "500-RUNNING", round_=2)
        assert again["assigned"] not in (None, lost)
        assert again["starts"] == 2
        assert again["pid"] != before["pid"]
    new_nodes = {n["node_id"] for n in corral.nodes()}
    assert lost not in new_nodes
    assert corral.describe(always)["assigned"] in new_nodes

    # the old round of every process is gone: nothing runs twice
    for before in (always_before, abnormal_before, never_before):
        corral.wait_until(lambda p=before["pid"]: not corral.pid_alive(p), "an old pid to go")
    for path in (always_pids, abnormal_pids):
        old, new = pids(corral, path)
        assert not corral.pid_alive(old)
        assert corral.pid_alive(new)
    assert len(pids(corral, never_pids)) == 1
    time.sleep(0.3)  # proving a negative: no further round starts
    assert [corral.describe(u)["round"] for u in (always, abnormal, never)] == [2, 2, 1]
    assert len(pids(corral, always_pids)) == 2


def test_a_node_whose_heartbeats_stop_is_warning_then_missing_and_then_replaced(
    corral, tmp_path: Path
) -> None:
    (node,) = corral.ready_nodes()
    frozen = node["node_id"]
    upid, path, before = start(corral, tmp_path, "ALWAYS")
    agent = corral.agent_pid(frozen)
    os.kill(agent, signal.SIGSTOP)  # the connection stays open; only the heartbeats stop
    try:

        def health() -> str | None:
            found = [n for n in corral.nodes() if n["node_id"] == frozen]
            return found[0]["health"] if found else None

        corral.wait_until(lambda: health() == "warning", "the node to be late (warning)")
        # late is not lost: the process is left alone
        still = corral.describe(upid)
        assert (still["state"], still["round"]) == ("500-RUNNING", 1)
        assert corral.pid_alive(before["pid"])

        again = corral.wait_state(upid, "500-RUNNING", round_=2)
        assert again["assigned"] != frozen
        assert health() is None
        corral.wait_until(lambda: not corral.pid_alive(before["pid"]), "the old round to go")
        assert not corral.pid_alive(agent)
        assert pids(corral, path) == [before["pid"], again["pid"]]
    finally:
        if corral.pid_alive(agent):
            os.kill(agent, signal.SIGCONT)


def test_a_process_queued_behind_a_lost_node_runs_on_the_replacement(
    corral, tmp_path: Path
) -> None:
    (node,) = corral.ready_nodes()
    blockers = [start(corral, tmp_path, "NEVER", name=f"blocker-{i}")[0] for i in range(4)]
    queued = corral.run("exit 0")
    assert "no free slot" in corral.wait_state(queued, "300-WAITING")["waiting_reason"]
    os.kill(corral.agent_pid(node["node_id"]), signal.SIGKILL)
    ended = corral.wait_end(queued)
    assert ended["state"] == "800-EXITED"
    assert ended["assigned"] != node["node_id"]
    for upid in blockers:
        assert corral.wait_end(upid)["state"] == "850-FAILED"


def test_a_frozen_agent_within_the_grace_keeps_its_process_in_the_same_round(
    corral, tmp_path: Path
) -> None:
    # SIGSTOP stands in for a partition: the connection stays open, heartbeats stop, and
    # after SIGCONT they arrive again on the same connection
    (node,) = corral.ready_nodes()
    frozen = node["node_id"]
    path = tmp_path / "svc.pids"
    upid = corral.run(
        FOREVER,
        env={"PIDS": path},
        restart_mode="ALWAYS",
        configuration={"corral": {"disconnect": {"grace": 30}}},
    )
    once = corral.run(
        FOREVER,
        env={"PIDS": tmp_path / "once.pids"},
        restart_mode="NEVER",
        configuration={"corral": {"disconnect": {"grace": 30}}},
    )
    before = corral.wait_state(upid, "500-RUNNING")
    corral.wait_state(once, "500-RUNNING")
    agent = corral.agent_pid(frozen)
    os.kill(agent, signal.SIGSTOP)
    try:
        corral.wait_until(
            lambda: [n for n in corral.nodes() if n["state"] == "disconnected"],
            "the node to be disconnected",
        )
        during = corral.describe(upid)
        assert (during["state"], during["round"]) == ("500-RUNNING", before["round"])
        assert during["disconnected_since"] is not None
        # an at-most-once process that may still run there is not started again by hand
        with pytest.raises(Conflict, match="at-most-once"):
            corral.client.restart_process(once)
        time.sleep(0.5)  # proving a negative: nothing replaces it, no node boots
        assert [n["node_id"] for n in corral.nodes()] == [frozen]
    finally:
        os.kill(agent, signal.SIGCONT)
    corral.wait_until(
        lambda: [
            n for n in corral.ready_nodes() if n["state"] in ("idle", "busy") and n["used"] == 2
        ],
        "the node to be back",
    )
    after = corral.wait_state(upid, "500-RUNNING", round_=before["round"])
    assert after["disconnected_since"] is None
    assert after["pid"] == before["pid"]
    assert pids(corral, path) == [before["pid"]]
    assert len(pids(corral, tmp_path / "once.pids")) == 1


def deafen(monkeypatch: pytest.MonkeyPatch, prefix: str, *statuses: str) -> None:
    """The dispatcher never hears these reports of the processes whose upid has ``prefix``."""
    apply = Syncer._apply

    def deaf(self: Syncer, record: Any, report: Any) -> Any:
        if record.upid.startswith(prefix) and report.status in statuses:
            return []
        return apply(self, record, report)

    monkeypatch.setattr(Syncer, "_apply", deaf)


def test_a_start_whose_report_died_with_its_agent_counts_as_run(
    corral, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent started it, then died before the dispatcher heard: the record still says
    PENDING, but the node's journal says it ran, so a NEVER process is not run again."""
    (node,) = corral.ready_nodes()
    lost = node["node_id"]
    path = tmp_path / "unheard.pids"
    deafen(monkeypatch, "unheard", "running")
    upid = corral.run(FOREVER, upid="unheard-1", env={"PIDS": path}, restart_mode="NEVER")
    (first,) = corral.wait_until(lambda: pids(corral, path), "the process to start")
    assert corral.describe(upid)["state"] == "400-PENDING"
    monkeypatch.undo()  # what the journal tells is heard

    os.kill(corral.agent_pid(lost), signal.SIGKILL)

    failed = corral.wait_state(upid, "850-FAILED")
    assert (failed["round"], failed["starts"]) == (1, 1)
    assert f"node {lost} lost" in failed["end_reason"]
    corral.wait_until(lambda: not corral.pid_alive(first), "the orphan to be killed")
    time.sleep(0.5)  # proving a negative: no second start on the new node
    assert pids(corral, path) == [first]
    history = [step["state"] for step in corral.client.process_history(upid)["steps"]]
    assert history[-2:] == ["500-RUNNING", "850-FAILED"]


def test_an_end_whose_reports_died_with_its_agent_stands(
    corral, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch job ran and succeeded, then its agent died before the dispatcher heard of
    either: the node's journal says how it ended, so it ends EXITED and is not run again
    (as a lost node's process of restart mode ABNORMAL would be)."""
    (node,) = corral.ready_nodes()
    lost = node["node_id"]
    path = tmp_path / "done.pids"
    deafen(monkeypatch, "unheard", "running", "exited")
    upid = corral.run('echo $$ >> "$PIDS"; exit 0', upid="unheard-2", env={"PIDS": path})
    (first,) = corral.wait_until(lambda: pids(corral, path), "the process to run")
    journal = corral.home / "nodes" / lost / "pids" / "journal"
    corral.wait_until(lambda: f"-{first} [0, " in journal.read_text(), "its end in the journal")
    assert corral.describe(upid)["state"] == "400-PENDING"
    monkeypatch.undo()

    os.kill(corral.agent_pid(lost), signal.SIGKILL)

    done = corral.wait_state(upid, "800-EXITED")
    assert (done["round"], done["starts"], done["exit_code"]) == (1, 1, 0)
    time.sleep(0.5)  # proving a negative: no second run on the new node
    assert pids(corral, path) == [first]
