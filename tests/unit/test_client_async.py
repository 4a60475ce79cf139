"""``corral.AsyncClient`` over ``httpx.ASGITransport``: the same operations and errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_api_fake_service import BASE_URL, TOKEN, FakeService, collect, event

from corral import AsyncClient, Conflict, NotFound, Unavailable, WaitTimeout
from corral.api import create_app
from corral.client import _requests

pytestmark = pytest.mark.anyio
EXECUTABLE = {"exec": "/bin/echo", "argv": ["hi"]}


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path))
    monkeypatch.delenv("CORRAL_URL", raising=False)
    monkeypatch.delenv("CORRAL_TOKEN", raising=False)


@pytest.fixture
def fake() -> FakeService:
    return FakeService()


@pytest.fixture
async def client(fake: FakeService) -> AsyncIterator[AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(fake, TOKEN))
    async with AsyncClient(BASE_URL, TOKEN, transport=transport) as made:
        yield made


async def test_operations_round_trip(client: AsyncClient, fake: FakeService) -> None:
    created = await client.create_definition("echo", "supd", EXECUTABLE)
    assert await client.describe_definition("echo") == created
    assert await client.list_definitions() == [created]
    await client.update_definition("echo", "supd", {"exec": "/bin/true"}, name="n")
    await client.create_process("p1", "echo")
    scheduled = await client.schedule_process("p1", configuration={"k": 1}, restart_mode="NEVER")
    assert scheduled["configuration"] == {"k": 1}
    assert (await client.describe_process("p1"))["upid"] == "p1"
    assert len(await client.describe_processes()) == 1
    assert (await client.wait_process("p1", ["RUNNING"], 1))["state"] == "500-RUNNING"
    assert (await client.restart_process("p1"))["round"] == 1
    assert (await client.terminate_process("p1"))["state"] == "700-TERMINATED"
    fake.logs["p1", "stderr"] = "oops"
    assert (await client.read_log("p1", "stderr"))["data"] == "oops"
    assert (await client.dump())["processes"] == 1
    assert (await client.list_nodes())[0]["node_id"] == "node-1"
    assert (await client.list_engines())[0]["engine_id"] == "default"
    assert await client.health() == {"status": "ok"}
    with pytest.raises(Conflict):
        await client.remove_definition("echo")


async def test_errors_come_back_as_their_classes(client: AsyncClient) -> None:
    with pytest.raises(NotFound) as caught:
        await client.describe_definition("ghost")
    assert caught.value.field == "definition_id"


async def test_events_stream(client: AsyncClient, fake: FakeService) -> None:
    fake.queued_events = [event("p1", "500-RUNNING", "400-PENDING")]
    fake.event_error = Unavailable("bye")
    seen: list[dict[str, Any]] = []
    with pytest.raises(Unavailable, match="bye"):
        await collect(client.events(), seen)
    assert seen == fake.queued_events


async def test_wait_process_times_out_after_polling_in_chunks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_requests, "WAIT_CHUNK", 0.01)
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(408, json={"error": {"type": "WaitTimeout", "message": "-"}})

    transport = httpx.MockTransport(handler)
    async with AsyncClient(BASE_URL, TOKEN, transport=transport) as client:
        with pytest.raises(WaitTimeout, match=r"did not reach a terminal state within 0\.03s"):
            await client.wait_process("p1", timeout=0.03)
    assert calls > 1


async def test_connection_refused_is_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with AsyncClient(BASE_URL, TOKEN, transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(Unavailable, match="corral serve"):
            await client.list_nodes()
