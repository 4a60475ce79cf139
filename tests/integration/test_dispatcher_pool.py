"""The elastic pool on real local agents: a queue grows it up to maximum_vms, and once the
work is done it shrinks back to base_need after idle_timeout, newest node first, each
retired node's agent stopped and its instance gone."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from corral.errors import Conflict, NotFound
from corral.testing.serve import pid_alive

pytestmark = pytest.mark.timeout(60)

IDLE_TIMEOUT = 1.0

ELASTIC = f"""
[[engines]]
id = "default"
allow_root = true  # the tests may run as root
slots = 1
launch_ahead = 0  # what finds no free slot waits in the dispatcher's queue
base_need = 1
maximum_vms = 3
idle_timeout = {IDLE_TIMEOUT}
heartbeat_period = 0.2
heartbeat_warning = 1.0
heartbeat_missing = 2.0
terminate_grace = 1.0
"""


def test_a_queue_grows_the_pool_which_shrinks_back_newest_first(
    start_corral, tmp_path: Path
) -> None:
    with start_corral(ELASTIC) as corral:
        first = corral.wait_until(lambda: corral.ready_nodes(), "the base node")[0]["node_id"]
        gate, last_gate = tmp_path / "gate", tmp_path / "last-gate"
        upids = [corral.run(corral.WAIT_FOR_GATE, env={"GATE": gate}) for _ in range(3)]
        upids.append(corral.run(corral.WAIT_FOR_GATE, env={"GATE": last_gate}))
        running = [corral.wait_state(u, "500-RUNNING", timeout=30) for u in upids[:3]]
        assert len({r["assigned"] for r in running}) == 3
        assert len(corral.nodes()) == 3  # capped at maximum_vms: the fourth waits
        waiting = corral.describe(upids[3])
        assert waiting["state"] == "300-WAITING"
        assert "maximum_vms" in waiting["waiting_reason"]
        grown = {n["node_id"]: corral.agent_pid(n["node_id"]) for n in corral.nodes()}

        # A node is retired once idle for idle_timeout, newest first among the nodes idle
        # that long: which one is kept depends on when each went idle, so the test orders
        # that. The grown nodes are held (kept, given nothing new), so the fourth process
        # runs on the base node, which goes idle last.
        newer = [node_id for node_id in grown if node_id != first]
        for node_id in newer:
            assert corral.client.hold_node(node_id)["idle_behavior"] == "hold"
        gate.touch()
        for upid in upids[:3]:
            assert corral.wait_end(upid)["state"] == "800-EXITED"
        assert corral.wait_state(upids[3], "500-RUNNING")["assigned"] == first
        last_gate.touch()
        assert corral.wait_end(upids[3])["state"] == "800-EXITED"
        # Once every node has been idle for idle_timeout, there are more candidates than
        # surplus nodes, and only their age decides: the newest go, the oldest stays. (Were
        # load to cut this wait short, the base node would merely not be a candidate yet:
        # the test would prove less, not fail.)
        time.sleep(2 * IDLE_TIMEOUT)
        for node_id in newer:
            assert corral.client.run_node(node_id)["idle_behavior"] == "run"
        left = corral.wait_until(
            lambda: len(corral.nodes()) == 1 and corral.nodes(), "the pool back at base_need"
        )
        assert left[0]["node_id"] == first  # the oldest stays
        for node_id, pid in grown.items():
            if node_id != first:
                corral.wait_until(lambda pid=pid: not pid_alive(pid), f"agent {pid} gone")
                assert not (corral.home / "nodes" / node_id).exists()


TWO_NODES = """
[[engines]]
id = "default"
allow_root = true  # the tests may run as root
slots = 1
launch_ahead = 0  # what finds no free slot waits in the dispatcher's queue
base_need = 2
maximum_vms = 2
idle_timeout = 1.0
heartbeat_period = 0.2
heartbeat_warning = 1.0
heartbeat_missing = 2.0
terminate_grace = 1.0
"""


def test_hold_drain_run_and_kill_a_node(start_corral, tmp_path: Path) -> None:
    with start_corral(TWO_NODES) as corral:
        a, b = (
            n["node_id"]
            for n in corral.wait_until(
                lambda: len(corral.ready_nodes()) == 2 and corral.ready_nodes(), "two nodes"
            )
        )
        client = corral.client
        assert client.hold_node(a)["idle_behavior"] == "hold"
        gate = tmp_path / "gate"
        first = corral.run(corral.WAIT_FOR_GATE, env={"GATE": gate})
        assert corral.wait_state(first, "500-RUNNING")["assigned"] == b
        second = corral.run(corral.WAIT_FOR_GATE, env={"GATE": gate})
        assert "no free slot" in corral.wait_state(second, "300-WAITING")["waiting_reason"]
        assert client.run_node(a)["idle_behavior"] == "run"
        assert corral.wait_state(second, "500-RUNNING")["assigned"] == a

        # drain: nothing new lands on b, and b retires once its process ends
        assert client.drain_node(b)["idle_behavior"] == "drain"
        gate.touch()
        assert corral.wait_end(first)["state"] == "800-EXITED"
        corral.wait_until(lambda: b not in {n["node_id"] for n in corral.nodes()}, "b retired")
        # base_need brings a fresh node in its place
        c = corral.wait_until(
            lambda: [n["node_id"] for n in corral.ready_nodes() if n["node_id"] != a],
            "a replacement node",
        )[0]

        # kill: a busy node goes now, and its ALWAYS service moves to the other one
        service = corral.run("while :; do sleep 0.05; done", restart_mode="ALWAYS")
        on = corral.wait_state(service, "500-RUNNING")["assigned"]
        other = c if on == a else a
        killed = client.kill_node(on)
        assert killed["state"] == "shutting_down"
        moved = corral.wait_until(
            lambda: (
                (r := corral.describe(service))["state"] == "500-RUNNING"
                and r["assigned"] == other
                and r
            ),
            "the service on the other node",
        )
        assert moved["round"] == 2
        assert "killed by an operator" in (moved["end_reason"] or "")


def test_node_actions_refuse_unknown_nodes_actions_and_retiring_nodes(start_corral) -> None:
    with start_corral(TWO_NODES) as corral:
        with pytest.raises(NotFound) as missing:
            corral.client.hold_node("no-such-node")
        assert missing.value.field == "node_id"
        node_id = corral.wait_until(lambda: corral.ready_nodes(), "a node")[0]["node_id"]
        auth = {"Authorization": f"Bearer {corral.token}"}
        with httpx.Client(base_url=corral.url, headers=auth) as http:
            response = http.post(f"/nodes/{node_id}/explode")
        assert response.status_code == 422
        assert "action" in response.text
        corral.client.kill_node(node_id)
        # shutting down (409) or already gone (404): either way refused, naming the node
        with pytest.raises((Conflict, NotFound)) as retiring:
            corral.client.drain_node(node_id)
        assert retiring.value.field == "node_id"
        assert node_id in retiring.value.message
