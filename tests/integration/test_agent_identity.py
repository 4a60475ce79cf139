"""Agents join with their own node's token and can act only as that node.

The agents here are raw wire connections the test scripts itself (an honest *victim* and
a hostile *intruder*, each with a valid token of its own) against a real dispatcher, so
the test decides exactly what each one says and when: the handshake proves a node's
token, and the Hello that follows must be that node's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest

from corral.errors import NotFound
from corral.secretfile import node_token
from corral.testing.dispatcher import TestDispatcher as Dispatcher
from corral.testing.dispatcher import open_test_dispatcher
from corral.testing.serve import wait_until
from corral.wire import handshake
from corral.wire.codec import Connection, open_connection
from corral.wire.messages import (
    AGENT_REALM,
    PROTOCOL_VERSION,
    Heartbeat,
    Hello,
    Kill,
    Launch,
    LogChunk,
    Message,
    ProcessReport,
    ReadLog,
    Refused,
    Welcome,
)

# Nodes are only ever joined by hand here; their heartbeats are slow and never missed.
HAND_JOINED = """
[[engines]]
id = "manual"
slots = 2
base_need = 0
maximum_vms = 0
heartbeat_period = 1.0
heartbeat_warning = 20.0
heartbeat_missing = 30.0
"""


@pytest.fixture
def corral() -> Any:
    with open_test_dispatcher(HAND_JOINED) as dispatcher:
        yield dispatcher


def secret(corral: Dispatcher) -> str:
    return (corral.home / "agent_token").read_text().strip()


def hello(node_id: str, **labels: str) -> Hello:
    return Hello(node_id, "manual", node_id, 2, labels, 1, PROTOCOL_VERSION, [])


async def connect(corral: Dispatcher) -> Connection:
    host, port = corral.runtime.agent_address or ("", 0)
    return await open_connection(host, port)


async def say_hello(
    corral: Dispatcher, token: str, node_id: str, greeting: Hello
) -> tuple[Connection, Message]:
    """Prove ``token`` as ``node_id``'s, then say ``greeting``; the dispatcher's answer."""
    conn = await connect(corral)
    try:
        introduction = handshake.new_hello(PROTOCOL_VERSION, AGENT_REALM, node_id, "test")
        await handshake.send_hello(conn, token, introduction)
        await conn.send_now(greeting)
        answer = (await asyncio.wait_for(conn.read_batch(), 10))[0]
    except BaseException:
        await conn.aclose()
        raise
    return conn, answer


@contextlib.asynccontextmanager
async def joined(corral: Dispatcher, node_id: str, role: str) -> AsyncIterator[Agent]:
    token = node_token(secret(corral), node_id)
    conn, answer = await say_hello(corral, token, node_id, hello(node_id, role=role))
    assert isinstance(answer, Welcome), answer
    agent = Agent(conn)
    try:
        yield agent
    finally:
        agent.close()


class Agent:
    """A joined connection: heartbeats in the background, commands queued for the test."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.commands: asyncio.Queue[Message] = asyncio.Queue()
        self._tasks = [asyncio.create_task(self._beat()), asyncio.create_task(self._read())]

    async def _beat(self) -> None:
        while True:
            self.conn.send(Heartbeat(time.time(), 0))
            await asyncio.sleep(0.5)

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                for msg in await self.conn.read_batch():
                    self.commands.put_nowait(msg)

    async def next(self, kind: type[Message]) -> Any:
        while True:
            msg = await asyncio.wait_for(self.commands.get(), 10)
            if isinstance(msg, kind):
                return msg

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.conn.close()


def report(upid: str, status: str, pid: int, exit_code: int | None = None) -> ProcessReport:
    now = time.time()
    ended = now if status == "exited" else None
    return ProcessReport(upid, 1, status, pid, exit_code, None, None, now, ended)  # type: ignore[arg-type]


async def prove_regardless(corral: Dispatcher, token: str, node_id: str) -> Message:
    """Introduce as ``node_id`` and prove with ``token`` without checking the dispatcher's
    proof (an honest agent stops there). The dispatcher's answer."""
    conn = await connect(corral)
    try:
        introduction = handshake.new_hello(PROTOCOL_VERSION, AGENT_REALM, node_id, "test")
        await conn.send_now(introduction)
        (challenge,) = await conn.read_batch()
        assert isinstance(challenge, handshake.Challenge)
        proof = handshake._proof(
            token, b"introduce", introduction, challenge.nonce, introduction.nonce
        )
        await conn.send_now(handshake.Proof(proof))
        return (await asyncio.wait_for(conn.read_batch(), 10))[0]
    finally:
        await conn.aclose()


@pytest.mark.anyio
async def test_an_agent_with_node_a_s_token_cannot_join_as_node_b(corral: Dispatcher) -> None:
    token_of_a = node_token(secret(corral), "node-a")
    for token in (token_of_a, secret(corral), ""):
        # an honest agent finds the dispatcher's proof wrong, and proves nothing
        with pytest.raises(handshake.AuthenticationFailed):
            await say_hello(corral, token, "node-b", hello("node-b"))
        # one that proves anyway is refused
        answer = await prove_regardless(corral, token, "node-b")
        assert isinstance(answer, Refused), token
        assert "wrong secret" in answer.reason
    # with its own token, node B joins
    token_of_b = node_token(secret(corral), "node-b")
    conn, answer = await say_hello(corral, token_of_b, "node-b", hello("node-b"))
    conn.close()
    assert isinstance(answer, Welcome)
    assert [n["node_id"] for n in corral.client.list_nodes()] == ["node-b"]


@pytest.mark.anyio
async def test_a_hello_for_another_node_than_the_proved_one_is_refused(
    corral: Dispatcher,
) -> None:
    token_of_a = node_token(secret(corral), "node-a")
    conn, answer = await say_hello(corral, token_of_a, "node-a", hello("node-b"))
    conn.close()
    assert isinstance(answer, Refused)
    assert "node-a" in answer.reason
    assert corral.client.list_nodes() == []


@pytest.mark.anyio
async def test_an_agent_of_protocol_version_3_is_refused_clearly(corral: Dispatcher) -> None:
    conn = await connect(corral)
    try:
        # version 3's Hello, token first: [code, token, node_id, engine, hostname, slots,
        # labels, pid, version, inventory]
        body = [1, node_token(secret(corral), "node-a"), "node-a", "manual", "h", 2, {}, 1, 3, []]
        payload = msgpack.packb([body], use_bin_type=True)
        conn._writer.write(len(payload).to_bytes(4, "big") + payload)
        (answer,) = await asyncio.wait_for(conn.read_batch(), 10)
    finally:
        conn.close()
    assert isinstance(answer, Refused)
    assert f"version {PROTOCOL_VERSION}" in answer.reason
    assert corral.client.list_nodes() == []


@pytest.mark.anyio
async def test_an_agent_reporting_another_nodes_process_changes_nothing(
    corral: Dispatcher,
) -> None:
    client = corral.client
    async with (
        joined(corral, "victim", "victim") as victim,
        joined(corral, "intruder", "intruder") as intruder,
    ):
        client.create_definition("sleeper", "supd", {"exec": "/bin/sleep", "argv": ["60"]})
        await asyncio.to_thread(
            client.schedule_process, "p", "sleeper", constraints={"role": "victim"}
        )
        launch = await victim.next(Launch)
        assert (launch.upid, launch.round) == ("p", 1)
        victim.conn.send(report("p", "running", 4242))
        await asyncio.to_thread(
            wait_until, lambda: client.describe_process("p")["state"] == "500-RUNNING", "p to run"
        )

        # the intruder says p ended, then that it runs p with another pid
        intruder.conn.send(report("p", "exited", 4242, exit_code=0))
        intruder.conn.send(report("p", "running", 6666))
        # the dispatcher takes its own report for stale and tells *it* to stop it
        assert (await intruder.next(Kill)).upid == "p"
        record = client.describe_process("p")
        assert (record["state"], record["assigned"], record["pid"], record["round"]) == (
            "500-RUNNING",
            "victim",
            4242,
            1,
        )
        assert victim.commands.empty()  # and nothing reached the victim

        # the intruder answers a log read asked of the victim: its answer is not taken
        reading = asyncio.create_task(asyncio.to_thread(client.read_log, "p"))
        asked = await victim.next(ReadLog)
        intruder.conn.send(LogChunk(asked.request_id, b"forged\n", 7, 7, None))
        await asyncio.sleep(0.2)
        assert not reading.done()
        victim.conn.send(LogChunk(asked.request_id, b"real\n", 5, 5, None))
        assert (await reading)["data"] == "real\n"

    with pytest.raises(NotFound):
        client.describe_node("nobody")
