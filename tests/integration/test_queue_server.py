"""The queue server on real stores (SQLite and PostgreSQL) and real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from corral.errors import Unavailable
from corral.pipeline.config import FrameworkConfig
from corral.pipeline.queue_host import QueueHost, queue_client_tls, queue_secret
from corral.queue import OwnQueueServer, QueueClient
from corral.queue.client import BlockingQueueClient
from corral.store import open_store
from corral.tls import make_self_signed, trusting
from corral.wire.handshake import AuthenticationFailed

pytestmark = pytest.mark.anyio
SECRET = "the queue's secret"


class Running:
    """A queue server on a store file, stopped and started again at will; its clients
    outlive a restart (they reconnect on their next request)."""

    def __init__(self, store_url: str, visibility: float) -> None:
        self.store_url = store_url
        self.visibility = visibility
        self.server: OwnQueueServer | None = None
        self.clients: list[QueueClient] = []

    async def start(self) -> None:
        port = self.server.address[1] if self.server is not None else 0  # the same, again
        self.server = OwnQueueServer(open_store(self.store_url), SECRET, self.visibility)
        await self.server.listen("127.0.0.1", port)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.aclose()

    async def close(self) -> None:
        await self.stop()
        for client in self.clients:
            await client.aclose()

    async def client(self, name: str, secret: str = SECRET) -> QueueClient:
        assert self.server is not None
        client = QueueClient(*self.server.address, secret, name)
        self.clients.append(client)
        await client.connect()
        return client


@pytest.fixture
async def queue(store_url: str) -> AsyncIterator[Running]:
    running = Running(store_url, visibility=0.5)
    await running.start()
    yield running
    await running.close()


async def test_a_client_with_a_wrong_secret_is_refused_and_changes_nothing(queue: Running) -> None:
    with pytest.raises(AuthenticationFailed, match="has a wrong secret"):
        await queue.client("intruder", secret="guess")
    good = await queue.client("producer")
    assert await good.listing("main") == ([], [])


async def test_events_survive_a_restart_and_held_ones_wait_for_their_holder(
    queue: Running,
) -> None:
    producer = await queue.client("producer")
    await producer.put("main", [("a", {"n": 1}, False), ("b", {"n": 2}, False)])
    worker = await queue.client("worker")
    (held,) = await worker.take("main", limit=1)
    await queue.stop()
    await queue.start()
    other = await queue.client("other")
    assert await other.take("main") == []  # nothing is given before the holders had a chance
    # the worker, idle, dialled back by itself and claimed its event: only the rest is given
    (left,) = await other.take("main", wait=5)
    assert (left.name, left.attempts) == ("b", 0)
    pending, now_held = await other.listing("main")
    assert (pending, [(e.name, e.holder) for e in now_held]) == (
        [],
        [("a", "worker"), ("b", "other")],
    )
    assert await worker.ack([held.id]) == []


async def test_a_vanished_holder_loses_its_events_to_another_client(queue: Running) -> None:
    producer = await queue.client("producer")
    await producer.put("main", [("a", {}, False)])
    first = await queue.client("first")
    (event,) = await first.take("main")
    await first.aclose()
    second = await queue.client("second")
    (again,) = await second.take("main", wait=5)  # after the visibility timeout
    assert (again.id, again.attempts) == (event.id, 1)
    late = await queue.client("first")
    assert await late.ack([event.id]) == [event.id]  # refused: second holds it now
    assert await second.ack([event.id]) == []


async def test_a_waiting_take_is_answered_by_the_next_put(queue: Running) -> None:
    worker = await queue.client("worker")
    producer = await queue.client("producer")
    waiting = asyncio.ensure_future(worker.take("main", wait=10))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await producer.put("main", [("late", {"x": [1, 2]}, False)])
    (event,) = await waiting
    assert (event.name, event.args) == ("late", '{"x": [1, 2]}')
    assert await worker.take("main", wait=0.2) == []


async def test_operators_see_what_is_pending_and_what_is_in_progress(queue: Running) -> None:
    producer = await queue.client("producer")
    await producer.put("main", [("a", {}, False), ("b", {"n": 2}, True), ("c", {}, False)])
    await producer.put("other", [("d", {}, False)])
    worker = await queue.client("worker")
    (held,) = await worker.take("main")
    assert queue.server is not None
    described = queue.server.describe(limit=1)
    assert described["clients"] == 2
    assert described["address"].startswith("127.0.0.1:")
    main, other = described["queues"]
    assert (main["queue"], main["pending"], main["in_progress"]) == ("main", 2, 1)
    assert [(e["name"], e["holder"]) for e in main["held"]] == [("a", "worker")]
    assert [(e["name"], e["args"], e["recurrent"]) for e in main["next"]] == [
        ("b", '{"n": 2}', True)
    ]  # the first of the pending only: limit=1
    assert (other["queue"], other["pending"], other["in_progress"]) == ("other", 1, 0)
    assert await worker.ack([held.id]) == []


def test_a_hosted_queue_with_a_certificate_speaks_only_tls(tmp_path: Path) -> None:
    certfile, keyfile = tmp_path / "queue.pem", tmp_path / "queue.key"
    make_self_signed(certfile, keyfile, ["127.0.0.1"])
    config = FrameworkConfig(
        queue_manager_portnr=0,
        queue_manager_certificate=str(certfile),
        queue_manager_key=str(keyfile),
        state_dir=str(tmp_path / "state"),
    )
    host = QueueHost(config)
    host.start()
    secret = queue_secret(config, create=False)
    assert secret is not None
    try:
        client = BlockingQueueClient(*host.address, secret, tls=queue_client_tls(config))
        try:
            client.connect()
            (event_id,) = client.put("main", [("ping", {"n": 1}, False)])
            assert [e.id for e in client.take("main")] == [event_id]
        finally:
            client.close()
        for tls in (None, trusting(_stranger(tmp_path), check_hostname=False)):
            plain = BlockingQueueClient(*host.address, secret, tls=tls)
            try:
                with pytest.raises(Unavailable):
                    plain.connect(timeout=3)
            finally:
                plain.close()
    finally:
        host.stop()


def _stranger(tmp_path: Path) -> str:
    make_self_signed(tmp_path / "other.pem", tmp_path / "other.key", ["127.0.0.1"])
    return (tmp_path / "other.pem").read_text()
