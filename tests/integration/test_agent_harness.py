"""A tiny hub and a real agent subprocess for the agent tests, plus the handshake tests.

The hub is an asyncio TCP server on 127.0.0.1 that speaks ``corral.wire`` through the same
``Connection`` and handshake the real hub uses (one token for every node, where the real hub
derives each node's); each accepted agent becomes a ``HubSession`` whose messages land in a
queue the test reads. The agent is ``python -m corral.agent`` in its own process,
with its state directory in the test's tmp dir. The other ``test_agent_*`` modules import
these helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import pytest

import corral.wire
from corral.agent.launcher import kill_orphans
from corral.agent.pidfiles import StateDirBusy
from corral.wire.codec import Connection, ConnectionClosed, ProtocolError
from corral.wire.handshake import AuthenticationFailed, answer_hello
from corral.wire.messages import (
    AGENT_REALM,
    PROTOCOL_VERSION,
    Hello,
    Message,
    ProcessReport,
    Refused,
    Welcome,
)

TOKEN = "s3cret-token"
SRC = Path(corral.wire.__file__).resolve().parents[2]
TIMEOUT = 25.0  # every scenario ends well before the 30 s pytest-timeout

M = TypeVar("M", bound=Message)


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, TIMEOUT))


class HubSession:
    """One agent connection as the test hub sees it."""

    def __init__(self, conn: Connection, hello: Hello) -> None:
        self.conn = conn
        self.hello = hello
        self.inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        self._unclaimed: list[Message] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                for msg in await self.conn.read_batch():
                    self.inbox.put_nowait(msg)
        except ConnectionClosed:
            self.inbox.put_nowait(None)

    def send(self, *messages: Message) -> None:
        self.conn.send_many(messages)

    async def expect(self, kind: type[M], where: Callable[[M], bool] = lambda _: True) -> M:
        """The first message of ``kind`` that satisfies ``where`` and no earlier call took.

        Messages that do not match stay for later calls, so the order in which a test asks
        need not be the order in which the agent sends.
        """
        for i, msg in enumerate(self._unclaimed):
            if isinstance(msg, kind) and where(msg):
                del self._unclaimed[i]
                return msg
        while True:
            got = await self.inbox.get()
            if got is None:
                raise AssertionError(f"connection closed while waiting for {kind.__name__}")
            if isinstance(got, kind) and where(got):
                return got
            self._unclaimed.append(got)

    async def report(self, upid: str, status: str, round_: int = 1) -> ProcessReport:
        return await self.expect(
            ProcessReport, lambda r: (r.upid, r.round, r.status) == (upid, round_, status)
        )

    async def closed(self) -> None:
        """Wait until the agent closes its end."""
        await self._reader

    async def aclose(self) -> None:
        await self.conn.aclose()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class Hub:
    """A test hub: the handshake with ``token`` as the node's token, then Welcome for a Hello
    of the node it proved; a failed handshake is kept in ``failures``.

    ``welcome`` replaces the default Welcome (to play a dispatcher of some epoch), and
    ``orders`` follow it in the same frame.
    """

    def __init__(
        self,
        token: str = TOKEN,
        heartbeat_period: float = 0.2,
        welcome: Welcome | None = None,
        orders: tuple[Message, ...] = (),
    ) -> None:
        self.token = token
        self.heartbeat_period = heartbeat_period
        self.welcome = welcome or Welcome(heartbeat_period)
        self.orders = orders
        self.sessions: asyncio.Queue[HubSession] = asyncio.Queue()
        self.live: list[HubSession] = []
        self.failures: list[Exception] = []
        self.failed = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self, port: int = 0) -> Hub:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(reader, writer)
        try:
            proven = await answer_hello(conn, self.token, AGENT_REALM, PROTOCOL_VERSION)
            batch = await conn.read_batch()
        except (AuthenticationFailed, ConnectionClosed, ProtocolError) as exc:
            self.failures.append(exc)
            self.failed.set()
            await conn.aclose()
            return
        hello = batch[0]
        assert isinstance(hello, Hello), hello
        if hello.node_id != proven.peer:
            conn.send(Refused(f"this connection proved {proven.peer!r}"))
            await conn.aclose()
            return
        conn.send_many([self.welcome, *self.orders])
        session = HubSession(conn, hello)
        for msg in batch[1:]:
            session.inbox.put_nowait(msg)
        self.live.append(session)
        self.sessions.put_nowait(session)

    async def next_session(self) -> HubSession:
        return await self.sessions.get()

    def stop_listening(self) -> None:
        """Accept no more agents (their dials are refused); the sessions go on."""
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        self.stop_listening()
        for session in self.live:
            await session.aclose()
        self.live.clear()


@contextlib.asynccontextmanager
async def running_hub(port: int = 0, token: str = TOKEN) -> AsyncIterator[Hub]:
    hub = await Hub(token).start(port)
    try:
        yield hub
    finally:
        await hub.close()


class AgentProcess:
    """The real agent, as a subprocess; its log goes to ``state_dir/../agent-N.log``."""

    def __init__(self, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    async def wait(self) -> int:
        return await self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def agent_command(port: int | str, state_dir: Path, *extra: str) -> list[str]:
    """The agent's command line; ``port`` may be a whole ``HOST:PORT,...`` list instead."""
    return [
        sys.executable,
        "-m",
        "corral.agent",
        "--dispatcher",
        f"127.0.0.1:{port}" if isinstance(port, int) else port,
        "--node-id",
        "node-a",
        "--engine",
        "eng-1",
        "--slots",
        "4",
        "--label",
        "zone=a",
        "--state-dir",
        str(state_dir),
        *extra,
    ]


def agent_environ(token: str = TOKEN) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env["CORRAL_AGENT_TOKEN"] = token
    return env


def _open_log(tmp_path: Path) -> tuple[Path, BinaryIO]:
    path = tmp_path / f"agent-{len(list(tmp_path.glob('agent-*.log')))}.log"
    return path, path.open("wb")


@contextlib.asynccontextmanager
async def running_agent(
    port: int | str,
    tmp_path: Path,
    token: str = TOKEN,
    *,
    orphans: str = "kill",
    args: tuple[str, ...] = ("--allow-root",),  # the tests may run as root
) -> AsyncIterator[AgentProcess]:
    """Start an agent on ``tmp_path/state`` with ``args``; SIGKILL it on the way out if still
    alive.

    Its processes are killed too (``kill_orphans``) unless ``orphans="keep"``.
    """
    log_path, log = _open_log(tmp_path)
    with log:
        proc = await asyncio.create_subprocess_exec(
            *agent_command(port, tmp_path / "state", *args),
            env=agent_environ(token),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    agent = AgentProcess(proc, log_path)
    try:
        yield agent
    except BaseException:
        print(f"--- agent log ({log_path}) ---\n{agent.log()}")
        raise
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if orphans == "kill":
            with contextlib.suppress(StateDirBusy):  # another agent of the test still runs
                kill_orphans(tmp_path / "state")


async def wait_gone(pid: int) -> None:
    """Wait until ``pid`` has exited (a zombie counts: it runs no more), without polling."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def on_exit() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(pidfd, on_exit)
    try:
        await done
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


def make_fifo(path: Path) -> int:
    """A FIFO a child can write to, and its non-blocking read end (open it before the child)."""
    os.mkfifo(path)
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK)


async def read_fifo(fd: int) -> str:
    """Everything a child writes to the FIFO, once it closes it; then close ``fd``.

    Until a writer has come and gone, Linux does not report hang-up on the read end, so this
    waits for the child without polling.
    """
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    eof = loop.create_future()

    def on_readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        if data:
            chunks.append(data)
        elif not eof.done():
            eof.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await eof
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return b"".join(chunks).decode()


def is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


# --- the handshake --------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_hello_carries_node_id_and_description(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub() as hub, running_agent(hub.port, tmp_path) as agent:
            session = await hub.next_session()
            hello = session.hello
            assert (hello.node_id, hello.engine) == ("node-a", "eng-1")
            assert (hello.slots, hello.labels, hello.pid) == (4, {"zone": "a"}, agent.proc.pid)
            assert hello.version == corral.wire.PROTOCOL_VERSION
            assert hello.inventory == []
            # Welcome's 0.2 s period overrides the default of 1 s.
            first = await session.expect(corral.wire.Heartbeat)
            second = await session.expect(corral.wire.Heartbeat)
            assert 0.05 < second.sent_at - first.sent_at < 0.9
            assert second.running == 0

    run(scenario())


async def _relay(
    listener: asyncio.StreamReader, writer: asyncio.StreamWriter, sent: bytearray | None
) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await listener.read(65536):
            if sent is not None:
                sent.extend(data)
            writer.write(data)
            await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def recording_relay(port: int) -> AsyncIterator[tuple[int, bytearray]]:
    """A TCP relay to ``port`` on 127.0.0.1: its own port, and every byte sent through it
    toward ``port``."""
    sent = bytearray()
    tasks: set[asyncio.Task[None]] = set()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        tasks.add(asyncio.create_task(_relay(reader, up_writer, sent)))
        tasks.add(asyncio.create_task(_relay(up_reader, writer, None)))

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], sent
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.timeout(30)
def test_the_agent_never_sends_its_token(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with (
            running_hub() as hub,
            recording_relay(hub.port) as (port, sent),
            running_agent(port, tmp_path),
        ):
            session = await hub.next_session()
            await session.expect(corral.wire.Heartbeat)
            await session.expect(corral.wire.Heartbeat)
        assert b"node-a" in sent  # the relay did see the agent's side
        assert TOKEN.encode() not in sent

    run(scenario())


@pytest.mark.timeout(30)
def test_wrong_token_is_refused_and_the_agent_exits_3(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with (
            running_hub() as hub,
            running_agent(hub.port, tmp_path, "not-the-token") as agent,
        ):
            assert await agent.wait() == 3
            assert "refused" in agent.log()
            assert hub.sessions.empty()
            # the agent found the hub's proof wrong, and never sent its own
            await hub.failed.wait()
            assert [type(exc) for exc in hub.failures] == [ConnectionClosed]

    run(scenario())


@pytest.mark.timeout(30)
def test_an_impostor_dispatcher_is_refused_and_the_agent_joins_the_next(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with (
            running_hub(token="not-the-secret") as impostor,
            running_hub() as hub,
            running_agent(f"127.0.0.1:{impostor.port},127.0.0.1:{hub.port}", tmp_path) as agent,
        ):
            session = await hub.next_session()
            assert session.hello.node_id == "node-a"
            assert impostor.sessions.empty()
            await impostor.failed.wait()
            assert [type(exc) for exc in impostor.failures] == [ConnectionClosed]
            assert agent.proc.returncode is None
            assert f"refused the dispatcher at 127.0.0.1:{impostor.port}" in agent.log()

    run(scenario())


@pytest.mark.timeout(30)
def test_a_second_agent_on_the_same_state_dir_exits_2(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub() as hub, running_agent(hub.port, tmp_path):
            await hub.next_session()
            async with running_agent(hub.port, tmp_path) as second:
                assert await second.wait() == 2
                assert "an agent is running on" in second.log()

    run(scenario())


@pytest.mark.timeout(30)
def test_the_agent_imports_none_of_the_dispatcher_libraries() -> None:
    code = (
        "import sys, corral.agent.main; "
        "heavy = {'fastapi', 'click', 'pydantic', 'rich', 'httpx', 'starlette', 'uvicorn'}; "
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=agent_environ(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"
