"""SIGKILL the dispatcher while its nodes are in every state, and start it again.

At the instant of the kill one node is busy (an ALWAYS service on it), one idle, one
being retired (SHUTTING_DOWN) and one still booting (BOOTING); while the dispatcher is
down another node's instance vanishes. The store is left exactly as a crash at that
instant would leave it. After the restart: the service runs on, untouched; the booting
node joins; the retirement is finished; the vanished node is lost and replaced; and the
pool is back at base_need.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from corral.core.node_states import NodeState
from corral.store import Put, Table, open_store

pytestmark = pytest.mark.timeout(90)

POOL = """
[[engines]]
id = "default"
allow_root = true  # the tests may run as root
driver = "local"
slots = 2
base_need = 5
maximum_vms = 5
heartbeat_period = 0.2
heartbeat_warning = 1.0
heartbeat_missing = 2.0
terminate_grace = 1.0
"""


def _set_node_states(home: Path, states: dict[str, NodeState]) -> None:
    """What the store holds after a crash in the middle of those moves."""
    store = open_store(f"sqlite:///{home / 'corral.db'}")
    try:
        nodes = store.load().tables[Table.NODES]
        store.apply(
            [
                Put(Table.NODES, node_id, {**nodes[node_id], "state": state.value})
                for node_id, state in states.items()
            ]
        )
    finally:
        store.close()


def test_a_restart_recovers_nodes_of_every_state(unstarted: Any) -> None:
    served = unstarted
    (served.home / "corral.toml").write_text(POOL)
    served.start()
    client = served.client()
    served.wait_until(lambda: len(served.connected_nodes()) == 5, "five nodes")
    served.define("svc", "exec sleep 600")
    client.schedule_process("svc", "svc", restart_mode="ALWAYS")
    before = served.wait_until(
        lambda: (r := client.describe_process("svc"))["state"] == "500-RUNNING" and r,
        "the service running",
    )
    busy = before["assigned"]
    idle, retiring, booting, vanishing = (
        n["node_id"] for n in served.connected_nodes() if n["node_id"] != busy
    )
    agents = {
        node_id: served.agent_pid(node_id) for node_id in (idle, retiring, booting, vanishing)
    }

    served.kill()
    _set_node_states(served.home, {retiring: NodeState.SHUTTING_DOWN, booting: NodeState.BOOTING})
    os.kill(agents[vanishing], signal.SIGKILL)  # its instance goes while nobody watches
    served.start()
    client = served.client()

    def recovered() -> list[dict[str, Any]] | None:
        nodes = served.connected_nodes()
        ids = {n["node_id"] for n in nodes}
        if len(nodes) == 5 and {busy, idle, booting} <= ids and not {retiring, vanishing} & ids:
            return nodes
        return None

    nodes = served.wait_until(recovered, "the pool recovered", 40)
    by_id = {n["node_id"]: n for n in nodes}
    assert by_id[booting]["state"] == "idle"
    assert by_id[busy]["state"] == "busy"
    listed = {n["node_id"] for n in client.list_nodes()}
    assert retiring not in listed
    assert vanishing not in listed
    served.wait_until(lambda: not served.pid_alive(agents[retiring]), "the retired agent gone")
    assert served.pid_alive(agents[idle])
    assert served.pid_alive(agents[booting])

    after = client.describe_process("svc")
    assert (after["state"], after["round"], after["pid"], after["starts"]) == (
        "500-RUNNING",
        before["round"],
        before["pid"],
        1,
    )
    assert served.pid_alive(before["pid"])
