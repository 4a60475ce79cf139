"""The elastic pool on real local agents: a queue grows it up to maximum_vms, and once the
work is done it shrinks back to base_need after idle_timeout, newest node first, each
retired node's agent stopped and its instance gone."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.testing.serve import pid_alive

pytestmark = pytest.mark.timeout(60)

ELASTIC = """
[[engines]]
id = "default"
slots = 1
base_need = 1
maximum_vms = 3
idle_timeout = 1.0
heartbeat_period = 0.2
heartbeat_warning = 1.0
heartbeat_missing = 2.0
terminate_grace = 1.0
"""


def test_a_queue_grows_the_pool_which_shrinks_back_newest_first(
    start_corral, tmp_path: Path
) -> None:
    with start_corral(ELASTIC) as corral:
        first = corral.wait_until(lambda: corral.ready_nodes(), "the base node")[0]
        gate = tmp_path / "gate"
        upids = [corral.run(corral.WAIT_FOR_GATE, env={"GATE": gate}) for _ in range(4)]
        running = [corral.wait_state(u, "500-RUNNING", timeout=30) for u in upids[:3]]
        assert len({r["assigned"] for r in running}) == 3
        assert len(corral.nodes()) == 3  # capped at maximum_vms: the fourth waits
        waiting = corral.describe(upids[3])
        assert waiting["state"] == "300-WAITING"
        assert "maximum_vms" in waiting["waiting_reason"]
        grown = {n["node_id"]: corral.agent_pid(n["node_id"]) for n in corral.nodes()}

        gate.touch()
        for upid in upids:
            assert corral.wait_end(upid)["state"] == "800-EXITED"
        left = corral.wait_until(
            lambda: len(corral.nodes()) == 1 and corral.nodes(), "the pool back at base_need"
        )
        assert left[0]["node_id"] == first["node_id"]  # the oldest stays
        for node_id, pid in grown.items():
            if node_id != first["node_id"]:
                corral.wait_until(lambda pid=pid: not pid_alive(pid), f"agent {pid} gone")
                assert not (corral.home / "nodes" / node_id).exists()
