"""Retention: a dispatcher forgets its ended processes past ``ended_max`` (or
``ended_retention``), the oldest first, records and histories together, and a restart finds
them gone from the store too. What still runs is never forgotten."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from corral import Client
from corral.dispatcher import retention
from corral.errors import NotFound
from corral.store import Table, open_store
from corral.testing.dispatcher import open_test_dispatcher
from corral.testing.serve import wait_until

pytestmark = pytest.mark.timeout(60)

CONFIG = """
[dispatcher]
ended_max = 3

[[engines]]
id = "default"
allow_root = true  # the tests may run as root
slots = 4
base_need = 1
maximum_vms = 1
"""


def test_ended_processes_past_the_bound_are_forgotten_oldest_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "PASS_EVERY", 0.05)
    home = tmp_path / "home"
    with open_test_dispatcher(CONFIG, home=home) as corral:
        client = corral.client
        wait_until(lambda: client.list_nodes(), "the node to join")
        client.create_definition("quick", "exec", {"exec": "/bin/true"})
        client.create_definition("sleeper", "exec", {"exec": "/bin/sleep", "argv": ["60"]})
        client.schedule_process("sleeper", "sleeper")
        client.wait_process("sleeper", ["500-RUNNING"], timeout=20)
        for i in range(6):  # one after the other, so that their ends are in order
            client.schedule_process(f"q{i}", "quick", restart_mode="NEVER")
            assert client.wait_process(f"q{i}", timeout=20)["state"] == "800-EXITED"

        wait_until(
            lambda: client.dump()["processes"]["by_state"].get("800-EXITED") == 3,
            "the three oldest ends to be forgotten",
        )
        for gone in ("q0", "q1", "q2"):
            with pytest.raises(NotFound, match=r"forgotten: ended processes are kept .* 3 at most"):
                client.describe_process(gone)
            with pytest.raises(NotFound, match="forgotten"):
                client.process_history(gone)
        assert [client.describe_process(f"q{i}")["state"] for i in (3, 4, 5)] == ["800-EXITED"] * 3
        assert client.describe_process("sleeper")["state"] == "500-RUNNING"
        client.terminate_process("sleeper")
        client.wait_process("sleeper", timeout=20)
        # its end makes q3 the oldest of four ended: it goes too
        wait_until(lambda: sum(client.dump()["processes"]["by_state"].values()) == 3, "q3 gone")
        metrics = httpx.get(
            f"{corral.url}/metrics", headers={"Authorization": f"Bearer {corral.token}"}
        )
        assert "corral_processes_forgotten_total 4.0" in metrics.text.splitlines()

    store = open_store(f"sqlite:///{home / 'corral.db'}")
    try:
        tables = store.load().tables
    finally:
        store.close()
    assert sorted(tables[Table.PROCESSES]) == ["q4", "q5", "sleeper"]
    assert {doc["u"] for doc in tables[Table.HISTORY].values()} == {"q4", "q5", "sleeper"}

    with open_test_dispatcher(CONFIG, home=home) as corral:
        client = corral.client
        with pytest.raises(NotFound):
            client.describe_process("q0")
        # a forgotten upid is a new process when scheduled again
        client.schedule_process("q0", "quick", restart_mode="NEVER")
        again = client.wait_process("q0", timeout=20)
        assert (again["state"], again["round"], again["starts"]) == ("800-EXITED", 1, 1)


def test_ended_processes_older_than_the_retention_are_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "PASS_EVERY", 0.05)
    config = CONFIG.replace("ended_max = 3", "ended_retention = 1.5\nended_max = 0")
    with open_test_dispatcher(config, home=tmp_path / "home") as corral:
        client = corral.client
        wait_until(lambda: client.list_nodes(), "the node to join")
        client.create_definition("quick", "exec", {"exec": "/bin/true"})
        client.schedule_process("old", "quick", restart_mode="NEVER")
        ended = client.wait_process("old", timeout=20)
        time.sleep(0.7)  # so that "young" ends well after "old"
        client.schedule_process("young", "quick", restart_mode="NEVER")
        client.wait_process("young", timeout=20)
        wait_until(lambda: "old" not in _upids(client), "the old end to be forgotten")
        # by the dispatcher's clock, at the retention after its end, not before
        assert time.time() - ended["updated_at"] >= 1.5
        assert client.describe_process("young")["state"] == "800-EXITED"


def _upids(client: Client) -> set[str]:
    return {p["upid"] for p in client.describe_processes()}
