"""What operators read from a real dispatcher: state histories, the audit log and the views.

Histories and the audit log are durable: a dispatcher started again on the same home reads
them back. Actions are attributed to the token that asked; what changes nothing (an
idempotent repeat) is not an action.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral import AsyncClient
from corral.errors import NotFound
from corral.testing import dispatcher as harness
from corral.testing.dispatcher import open_test_dispatcher
from corral.testing.serve import wait_until

pytestmark = pytest.mark.timeout(60)

CONFIG = """
[[engines]]
id = "default"
slots = 4
allow_root = true  # the tests may run as root
base_need = 1
maximum_vms = 1
heartbeat_period = 0.2
heartbeat_warning = 1.0
heartbeat_missing = 2.0
terminate_grace = 1.0
"""
DEADLINE = 20.0


def http(dispatcher: harness.TestDispatcher, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token or dispatcher.token}"}
    return httpx.Client(base_url=dispatcher.url, headers=headers, timeout=10.0)


def node_up(dispatcher: harness.TestDispatcher) -> str:
    def ready() -> str | None:
        nodes = [n for n in dispatcher.client.list_nodes() if n["connected"]]
        return nodes[0]["node_id"] if nodes else None

    return wait_until(ready, "a node to join", DEADLINE)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def first_run(home: Path) -> Iterator[harness.TestDispatcher]:
    with open_test_dispatcher(CONFIG, home=home) as dispatcher:
        yield dispatcher


def states(history: dict[str, Any]) -> list[str]:
    return [step["state"] for step in history["steps"]]


def test_history_and_audit_log_survive_a_restart(home: Path) -> None:
    with open_test_dispatcher(CONFIG, home=home) as dispatcher:
        node_up(dispatcher)
        client = dispatcher.client
        client.create_definition("true", "exec", {"exec": "/bin/true"})
        client.create_definition("sleep", "exec", {"exec": "/bin/sleep", "argv": ["60"]})
        client.schedule_process("done", "true", restart_mode="NEVER")
        client.wait_process("done", timeout=DEADLINE)
        client.schedule_process("long", "sleep", restart_mode="NEVER")
        client.wait_process("long", ["RUNNING"], timeout=DEADLINE)
        client.schedule_process("long", "sleep", restart_mode="NEVER")  # a repeat: no action
        client.terminate_process("long")
        client.wait_process("long", timeout=DEADLINE)
        with http(dispatcher) as api:
            before = api.get("/processes/done/history").json()
            log = api.get("/audit").json()
    assert states(before) == [
        "200-REQUESTED",
        "350-ASSIGNED",
        "400-PENDING",
        "500-RUNNING",
        "800-EXITED",
    ]
    times = [step["time"] for step in before["steps"]]
    assert times == sorted(times)
    assert before["steps"][-1]["detail"] == "exited with status 0"
    assert before["steps"][1]["detail"].startswith("on node ")
    actions = [(e["action"], e["target"]) for e in reversed(log["entries"])]
    assert actions == [
        ("create_definition", "true"),
        ("create_definition", "sleep"),
        ("schedule_process", "done"),
        ("schedule_process", "long"),
        ("terminate_process", "long"),
    ]
    assert {e["actor"] for e in log["entries"]} == {"api token from 127.0.0.1"}

    with open_test_dispatcher(CONFIG, home=home) as again, http(again) as api:
        after = api.get("/processes/done/history").json()
        long = api.get("/processes/long/history").json()
        log_after = api.get("/audit").json()
    assert after["steps"] == before["steps"]
    assert states(long)[-2:] == ["600-TERMINATING", "700-TERMINATED"]
    assert log_after["entries"] == log["entries"]


def test_node_actions_and_batches_are_in_the_audit_log_and_found_by_target(
    first_run: harness.TestDispatcher,
) -> None:
    node = node_up(first_run)
    client = first_run.client
    client.create_definition("true", "exec", {"exec": "/bin/true"})
    client.schedule_processes(
        [{"upid": f"b{i}", "definition_id": "true", "restart_mode": "NEVER"} for i in range(3)]
    )
    with http(first_run) as api:
        assert api.post(f"/nodes/{node}/hold").status_code == 200
        assert api.post(f"/nodes/{node}/hold").status_code == 200  # already held: no action
        assert api.post(f"/nodes/{node}/run").status_code == 200
        about_node = api.get("/audit", params={"target": node}).json()["entries"]
        about_b1 = api.get("/audit", params={"target": "b1"}).json()["entries"]
        paged = api.get("/audit", params={"limit": 2}).json()
        older = api.get("/audit", params={"limit": 2, "before": paged["next_before"]}).json()
    assert [e["detail"]["action"] for e in about_node] == ["run", "hold"]
    [batch] = about_b1
    assert batch["action"] == "schedule_processes"
    assert batch["detail"]["upids"] == ["b0", "b1", "b2"]
    ids = [e["id"] for e in paged["entries"] + older["entries"]]
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == 4


def test_the_read_only_token_reads_but_cannot_act(first_run: harness.TestDispatcher) -> None:
    node_up(first_run)
    first_run.client.create_definition("true", "exec", {"exec": "/bin/true"})
    with http(first_run, first_run.readonly_token) as api:
        assert api.get("/processes").status_code == 200
        assert api.get("/ui/api/overview").status_code == 200
        refused = api.post("/processes/x/schedule", json={"definition_id": "true"})
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "Forbidden"
    with http(first_run) as api:
        assert api.get("/processes/x").status_code == 404


def test_the_views_count_filter_and_page_processes(first_run: harness.TestDispatcher) -> None:
    node_up(first_run)
    client = first_run.client
    client.create_definition("true", "exec", {"exec": "/bin/true"})
    client.create_definition("corral-compute-worker", "exec", {"exec": "/bin/true"})
    for i in range(5):
        client.create_process(f"idle-{i}", "true", name=f"idle number {i}")
    client.schedule_process(
        "corral-pool-shared-w0",
        "corral-compute-worker",
        configuration={"compute": {"pool": "shared", "secret": "s"}},
        name="compute pool shared",
        restart_mode="NEVER",
    )
    client.wait_process("corral-pool-shared-w0", timeout=DEADLINE)
    with http(first_run) as api:
        overview = api.get("/ui/api/overview").json()
        page = api.get(
            "/ui/api/processes",
            params={
                "state": "UNSCHEDULED",
                "sort": "upid",
                "order": "asc",
                "limit": 2,
                "offset": 2,
            },
        ).json()
        found = api.get("/ui/api/processes", params={"q": "NUMBER 3"}).json()
        computations = api.get("/ui/api/computations").json()["computations"]
        pipelines = api.get("/ui/api/pipelines").json()
    assert overview["processes"]["total"] == 6
    assert overview["processes"]["by_state"]["100-UNSCHEDULED"] == 5
    assert overview["nodes"]["by_engine"]["default"]["nodes"] == 1
    assert sum(m["count"] for m in overview["launches_per_minute"]) == 1
    assert (page["total"], [p["upid"] for p in page["items"]]) == (5, ["idle-2", "idle-3"])
    assert [p["upid"] for p in found["items"]] == ["idle-3"]
    [pool] = computations
    assert (pool["kind"], pool["name"], pool["live"]) == ("shared pool", "shared", 0)
    assert [w["upid"] for w in pool["workers"]] == ["corral-pool-shared-w0"]
    assert pipelines == {"time": pipelines["time"], "queue": None, "pipelines": []}


def test_both_clients_read_histories_and_the_audit_log(first_run: harness.TestDispatcher) -> None:
    node_up(first_run)
    client = first_run.client
    client.create_definition("true", "exec", {"exec": "/bin/true"})
    client.schedule_process("seen", "true", restart_mode="NEVER")
    client.wait_process("seen", timeout=DEADLINE)
    history = client.process_history("seen")
    assert states(history)[-1] == "800-EXITED"
    audit = client.audit_log(target="seen")
    assert [e["action"] for e in audit["entries"]] == ["schedule_process"]
    with pytest.raises(NotFound):
        client.process_history("unseen")

    async def read() -> tuple[dict[str, Any], dict[str, Any]]:
        async with AsyncClient(first_run.url, first_run.token) as aio:
            return await aio.process_history("seen"), await aio.audit_log(limit=1)

    async_history, page = asyncio.run(read())
    assert async_history == history
    assert len(page["entries"]) == 1
    assert page["next_before"] == page["entries"][0]["id"]
