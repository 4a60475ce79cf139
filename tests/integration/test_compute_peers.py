"""Peers that should not be trusted, and a client that disappears.

Each unauthenticated peer below carries a pickle that would create a directory if anything
unpickled it: the directory must never appear, whichever side the peer pretends to be.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import Corral
from corral import AsyncClient
from corral.compute import Computation
from corral.compute.messages import (
    COMPUTE_MESSAGES,
    PROTOCOL_VERSION,
    Challenge,
    Done,
    Hello,
    Setup,
)
from corral.compute.worker import EXIT_REFUSED
from corral.wire.codec import ConnectionClosed, FramedConnection

pytestmark = pytest.mark.anyio

PULSE = 0.2


class Trap:
    """Unpickling this creates ``path`` (a directory)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.path),)


def trap(tmp_path: Path) -> tuple[Path, bytes]:
    sentinel = tmp_path / "unpickled"
    return sentinel, pickle.dumps(Trap(sentinel))


async def dial(address: str) -> FramedConnection[object]:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    return FramedConnection(reader, writer, COMPUTE_MESSAGES)  # type: ignore[arg-type]


async def closed_by_peer(conn: FramedConnection[object]) -> bool:
    try:
        async with asyncio.timeout(5):
            while True:
                await conn.read_batch()
    except ConnectionClosed:
        return True
    finally:
        await conn.aclose()


async def test_a_worker_without_the_secret_is_dropped_before_any_unpickling(
    dispatcher: AsyncClient, tmp_path: Path
) -> None:
    sentinel, blob = trap(tmp_path)
    async with Computation(dispatcher=dispatcher, pulse_interval=PULSE) as c:
        await c.schedule(workers=1)
        address = c._address
        # a wrong proof, then results carrying the trap
        conn = await dial(address)
        conn.send(Hello(PROTOCOL_VERSION, c.id, f"{c.id}-w0", "evil", 1, os.urandom(32)))
        await conn.drain()
        challenge = (await conn.read_batch())[0]
        assert isinstance(challenge, Challenge)
        conn.send_many([Done(1, True, blob, ""), Done(1, False, blob, "")])  # type: ignore[list-item]
        await conn.drain()
        assert await closed_by_peer(conn)
        # no Hello at all: the trap first
        conn = await dial(address)
        conn.send(Done(1, True, blob, ""))
        await conn.drain()
        assert await closed_by_peer(conn)
        assert await c.run_result(sum, [1, 2]) == 3  # the real worker is unaffected
    assert not sentinel.exists()


async def fake_client(handle: object) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)  # type: ignore[arg-type]
    return server, f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def run_worker(address: str, secret: str) -> subprocess.CompletedProcess[bytes]:
    configuration = {
        "compute": {
            "address": address,
            "computation": "c1",
            "secret": secret,
            "pulse_interval": PULSE,
        }
    }
    env = {**os.environ, "CORRAL_CONFIGURATION": json.dumps(configuration), "CORRAL_UPID": "w"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "corral.compute", env=env, stderr=subprocess.PIPE
    )
    async with asyncio.timeout(20):
        _, err = await proc.communicate()
    assert proc.returncode is not None
    return subprocess.CompletedProcess([], proc.returncode, b"", err)


async def test_a_client_without_the_secret_gets_nothing_unpickled(tmp_path: Path) -> None:
    sentinel, blob = trap(tmp_path)

    async def wrong_proof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = FramedConnection(reader, writer, COMPUTE_MESSAGES)
        await conn.read_batch()  # the Hello
        await conn.send_now(Challenge(os.urandom(32), os.urandom(32)))
        conn.send(Setup("c1", "n", [], [], blob, PULSE))
        await conn.aclose()

    server, address = await fake_client(wrong_proof)
    async with server:
        done = await run_worker(address, "the secret")
    assert done.returncode == EXIT_REFUSED
    assert b"has a wrong secret" in done.stderr
    assert not sentinel.exists()

    async def setup_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = FramedConnection(reader, writer, COMPUTE_MESSAGES)
        conn.send(Setup("c1", "n", [], [], blob, PULSE))
        await conn.aclose()

    server, address = await fake_client(setup_first)
    async with server:
        done = await run_worker(address, "the secret")
    assert done.returncode == EXIT_REFUSED
    assert b"expected Challenge" in done.stderr
    assert not sentinel.exists()


CLIENT = textwrap.dedent(
    """
    import asyncio, sys, time
    from corral import AsyncClient
    from corral.compute import Computation

    def hold(seconds):
        time.sleep(seconds)

    async def main():
        async with AsyncClient(sys.argv[1], sys.argv[2]) as dispatcher:
            c = Computation(dispatcher=dispatcher, pulse_interval=0.2)
            await c.schedule(workers=2)
            for proc in await c.procs():
                await c.run_at(proc, hold, 60)
            print(" ".join(p.process for p in await c.procs()), flush=True)
            await asyncio.sleep(60)

    asyncio.run(main())
    """
)


async def test_a_client_killed_mid_computation_releases_its_workers(
    module_corral: Corral, dispatcher: AsyncClient, tmp_path: Path
) -> None:
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    client = await asyncio.create_subprocess_exec(
        sys.executable, str(script), module_corral.url, module_corral.token, stdout=subprocess.PIPE
    )
    assert client.stdout is not None
    async with asyncio.timeout(30):
        upids = (await client.stdout.readline()).decode().split()
    assert len(upids) == 2
    for upid in upids:
        assert (await dispatcher.describe_process(upid))["state"] == "500-RUNNING"
    client.send_signal(signal.SIGKILL)
    await client.wait()
    for upid in upids:  # each worker notices, gives its client five pulses, and exits
        record = await dispatcher.wait_process(upid, timeout=30)
        assert record["state"] == "800-EXITED", record
