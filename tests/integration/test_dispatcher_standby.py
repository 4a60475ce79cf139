"""A dispatcher of a shared PostgreSQL store, in-process: it fences itself when it loses
its lease, whether another dispatcher took it or its database went out of reach.

The database is reached through a small TCP relay the test can cut (data stops flowing,
connections stay open), which is what a network partition looks like from the dispatcher.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import psycopg
import pytest

from corral.config import parse_config
from corral.dispatcher.runtime import RuntimeSettings
from corral.dispatcher.service import Dispatcher
from corral.dispatcher.standby import Role, Standby
from corral.errors import Conflict
from corral.store import open_store
from corral.store.lease import PostgresLease
from corral.testing.postgres import PostgresServer
from corral.tls import ServerTLS, chain_top, make_self_signed

pytestmark = pytest.mark.anyio

LEASE = 1.0
CONFIG = parse_config({"engines": [{"id": "default", "base_need": 0, "maximum_vms": 1}]})


class Relay:
    """Forwards TCP to ``port``; ``cut()`` stops the data (both ways), like a partition."""

    def __init__(self, port: int) -> None:
        self._target = port
        self.cut_off = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> Relay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut(self) -> None:
        self.cut_off = True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        self._tasks.update(pipes)
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for task in pipes:
            task.cancel()
        for w in (writer, up_writer):
            w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if not self.cut_off:
                writer.write(data)
                await writer.drain()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class Running:
    """A `Standby` running in this loop, with what it told the API."""

    def __init__(self, home: Path, store_url: str, tls: ServerTLS | None = None) -> None:
        (home / "agent_token").parent.mkdir(parents=True, exist_ok=True)
        settings = RuntimeSettings(home, CONFIG, "agent-token", None, store_url, tls=tls)
        self.roles: list[Role] = []
        self.dispatchers: list[Dispatcher] = []
        self.standby = Standby(
            settings,
            "http://api.test",
            self.dispatchers.append,
            self.roles.append,
            lease_duration=LEASE,
        )
        self.task: asyncio.Task[int] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.standby.run())

    @property
    def role(self) -> Role | None:
        return self.roles[-1] if self.roles else None

    async def wait_role(self, active: bool, within: float = 10.0) -> float:
        """Wait for the role; how long it took."""
        began = time.monotonic()
        while self.role is None or self.role.active != active:
            assert time.monotonic() - began < within, f"still {self.role} after {within}s"
            assert self.task is not None
            assert not self.task.done(), "the standby ended"
            await asyncio.sleep(0.02)
        return time.monotonic() - began

    async def stop(self) -> int:
        self.standby.stop()
        assert self.task is not None
        return await asyncio.wait_for(self.task, 20)


def agent_port_open(home: Path) -> bool:
    host, _, port = (home / "agent_address").read_text().strip().rpartition(":")
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) == 0


@pytest.fixture
def database(postgres: PostgresServer) -> str:
    url = postgres.database()
    open_store(url).close()
    return url


async def test_a_dispatcher_whose_lease_is_taken_stops_at_once_and_stands_by(
    tmp_path: Path, database: str
) -> None:
    running = Running(tmp_path / "home", database)
    running.start()
    try:
        await running.wait_role(active=True)
        assert running.role == Role(True, 1, "http://api.test", running.standby.me)
        assert agent_port_open(tmp_path / "home")
        # a rival expires the lease and takes it, as one whose clock ran fast would
        rival = PostgresLease(database, "rival", {"api": "http://rival.test"})
        try:
            with psycopg.connect(database, autocommit=True) as conn:
                conn.execute("UPDATE leases SET expires = 0")
            assert await rival.acquire(30.0) == 2
            took = await running.wait_role(active=False, within=LEASE + 1.0)
            assert took < LEASE / 3 + 0.5, f"stopped {took:.2f}s after losing the lease"
            assert running.standby.runtime is None
            assert not agent_port_open(tmp_path / "home"), "a standby takes agents"
            await asyncio.sleep(LEASE / 2)
            assert running.role == Role(False, 2, "http://rival.test", "rival")
            # once the rival gives the lease up, this dispatcher takes it back
            await rival.release(2)
            await running.wait_role(active=True)
            assert running.standby.terms == [1, 3]
        finally:
            await rival.aclose()
    finally:
        assert await running.stop() == 0


async def test_a_dispatcher_cut_from_its_database_fences_itself_within_its_lease(
    tmp_path: Path, database: str, postgres: PostgresServer
) -> None:
    relay = await Relay(postgres.port).start()
    cut_url = database.replace(f":{postgres.port}/", f":{relay.port}/")
    running = Running(tmp_path / "home", cut_url)
    running.start()
    try:
        await running.wait_role(active=True)
        relay.cut()
        took = await running.wait_role(active=False, within=2 * LEASE + 5.0)
        assert took < LEASE + 0.5, f"fenced {took:.2f}s after the cut, past its lease"
        assert not agent_port_open(tmp_path / "home")
        # the lease expires in the database too: another dispatcher may take over
        await asyncio.sleep(0.3)
        other = PostgresLease(database, "other", {})
        try:
            assert await other.acquire(30.0) == 2
        finally:
            await other.aclose()
    finally:
        await running.stop()
        await relay.aclose()


async def test_a_dispatcher_serving_another_certificate_than_its_peers_refuses_to_stand_by(
    tmp_path: Path, database: str
) -> None:
    pairs = {}
    for name in ("ours", "theirs"):
        make_self_signed(tmp_path / f"{name}.pem", tmp_path / f"{name}.key", ["127.0.0.1"])
        pairs[name] = ServerTLS.load(tmp_path / f"{name}.pem", tmp_path / f"{name}.key")
    peer = {"api": "https://peer.test", "agents": "127.0.0.1:1"}
    rival = PostgresLease(
        database, "rival", {**peer, "tls": chain_top(pairs["theirs"].certificate)}
    )
    try:
        await rival.register(60.0)
        for tls, said in ((pairs["ours"], "another TLS certificate"), (None, "serves TLS")):
            refused = Running(tmp_path / f"refused-{said[:5]}", database, tls)
            refused.start()
            assert refused.task is not None
            with pytest.raises(Conflict, match=said):
                await asyncio.wait_for(refused.task, 10)
            assert refused.dispatchers == []
        alike = Running(tmp_path / "alike", database, pairs["theirs"])
        alike.start()
        await alike.wait_role(active=True)
        assert await alike.stop() == 0
    finally:
        await rival.leave()
        await rival.aclose()
