"""A real dispatcher with real local agents, and helpers, for the ``test_dispatcher_*`` tests.

``start_corral(config_toml)`` opens ``corral.testing.open_test_dispatcher`` and waits until
every engine's ``base_need`` nodes have joined, so a test starts on a settled pool. The
``Corral`` handle it yields wraps the public ``Client`` with what the tests keep needing:
definitions of ``/bin/sh -c SCRIPT``, waiting with a deadline (never a bare sleep), and
looking at OS processes (a zombie counts as gone: PID 1 here may never reap orphans).

Processes in these tests usually block on a *gate* (a file the test creates) so the test
decides when they end, and append a line to a file each time they start, so "started
twice" is counted by the OS rather than by the dispatcher's own bookkeeping.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import threading
import tomllib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from corral import AsyncClient, Client
from corral.testing.dispatcher import open_test_dispatcher
from corral.testing.postgres import PostgresServer
from corral.testing.serve import pid_alive, wait_until

T = TypeVar("T")

#: every wait of these tests ends well before the 30 s per-test timeout
DEADLINE = 20.0

ONE_NODE = """
[[engines]]
id = "default"
allow_root = true  # the tests may run as root
slots = 8
base_need = 1
maximum_vms = 1
heartbeat_period = 0.2
heartbeat_warning = 1.0
heartbeat_missing = 2.0
terminate_grace = 1.0
"""

#: a script fragment: block until the file named by $GATE exists
WAIT_FOR_GATE = 'while [ ! -e "$GATE" ]; do sleep 0.05; done'


class Corral:
    """A running test dispatcher, its client, and helpers.

    The helpers are also reachable from here (``corral.wait_until``, ``corral.pid_alive``,
    ``corral.WAIT_FOR_GATE``) so test modules need not import this conftest.
    """

    WAIT_FOR_GATE = WAIT_FOR_GATE
    DEADLINE = DEADLINE
    wait_until = staticmethod(wait_until)
    pid_alive = staticmethod(pid_alive)

    def __init__(self, client: Client, home: Path, url: str, token: str) -> None:
        self.client = client
        self.home = home
        self.url = url
        self.token = token
        self._ids = itertools.count(1)

    # -- definitions and processes ------------------------------------------------------

    def unique(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    def define(
        self,
        script: str,
        *,
        env: dict[str, str] | None = None,
        working_directory: str | None = None,
    ) -> str:
        """A new definition running ``/bin/sh -c script``; returns its id."""
        definition_id = self.unique("sh")
        executable: dict[str, Any] = {"exec": "/bin/sh", "argv": ["-c", script]}
        if env:
            executable["env"] = env
        if working_directory is not None:
            executable["working_directory"] = working_directory
        self.client.create_definition(definition_id, "exec", executable)
        return definition_id

    def run(
        self,
        script: str,
        upid: str | None = None,
        env: dict[str, str | os.PathLike[str]] | None = None,
        **schedule: Any,
    ) -> str:
        """Schedule a new process running ``script`` with ``env``; returns its upid."""
        upid = upid or self.unique("p")
        definition = self.define(script, env={k: str(v) for k, v in (env or {}).items()})
        self.client.schedule_process(upid, definition, **schedule)
        return upid

    def lines(self, path: Path) -> list[str]:
        """The lines of a file a process appends to (none if it does not exist yet)."""
        try:
            return path.read_text().splitlines()
        except FileNotFoundError:
            return []

    def describe(self, upid: str) -> dict[str, Any]:
        return self.client.describe_process(upid)

    def wait_state(
        self, upid: str, state: str, round_: int | None = None, timeout: float = DEADLINE
    ) -> dict[str, Any]:
        """Poll until ``upid`` is in ``state`` (e.g. ``"500-RUNNING"``), in ``round_`` if
        given; unlike ``wait_process`` this does not return on another terminal state."""

        def probe() -> dict[str, Any] | None:
            record = self.describe(upid)
            if record["state"] == state and (round_ is None or record["round"] == round_):
                return record
            return None

        where = f" in round {round_}" if round_ is not None else ""
        return wait_until(probe, f"{upid} to be {state}{where}", timeout)

    def wait_end(self, upid: str, timeout: float = DEADLINE) -> dict[str, Any]:
        """``wait_process`` until terminal."""
        return self.client.wait_process(upid, timeout=timeout)

    def stop_all(self) -> None:
        """Terminate every unfinished process and wait until each is terminal."""
        for record in self.client.describe_processes():
            if record["state"] not in _TERMINAL:
                self.client.terminate_process(record["upid"])
        for record in self.client.describe_processes():
            if record["state"] not in _TERMINAL:
                self.client.wait_process(record["upid"], ["TERMINATED"], timeout=DEADLINE)

    # -- event streams --------------------------------------------------------------------

    def events(self, upid: str | None = None) -> EventRecorder:
        """A live events stream (of ``upid``, or of every process), read in a thread."""
        return EventRecorder(self.url, self.token, upid)

    # -- nodes --------------------------------------------------------------------------

    def nodes(self, engine: str | None = None) -> list[dict[str, Any]]:
        return [n for n in self.client.list_nodes() if engine is None or n["engine"] == engine]

    def ready_nodes(self, engine: str | None = None) -> list[dict[str, Any]]:
        return [n for n in self.nodes(engine) if n["connected"] and n["health"] == "ok"]

    def agent_pid(self, node_id: str) -> int:
        record = json.loads((self.home / "nodes" / node_id / "instance.json").read_text())
        return int(record["pid"])


_TERMINAL = ("700-TERMINATED", "800-EXITED", "850-FAILED", "900-REJECTED")


class _EventsTransport(httpx.BaseTransport):
    """httpx's transport, noting when the /events answer began and on which socket."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.opened = threading.Event()
        self.socket: socket.socket | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        if request.url.path == "/events":
            stream = response.extensions.get("network_stream")
            self.socket = stream.get_extra_info("socket") if stream is not None else None
            self.opened.set()
        return response

    def close(self) -> None:
        self._inner.close()


class EventRecorder:
    """Reads ``Client.events(upid)`` in a thread, with its own client, into ``events``.

    Once the answer's headers are in, the stream is subscribed: the dispatcher subscribes
    it on the loop turn right after it sends them, before it reads any later request.
    ``close`` shuts the socket down, which is what ends a blocked read.
    """

    def __init__(self, url: str, token: str, upid: str | None) -> None:
        self._transport = _EventsTransport()
        self._client = Client(url, token, transport=self._transport)
        self._upid = upid
        self.events: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        if not self._transport.opened.wait(DEADLINE):
            self.close()
            pytest.fail(f"the events stream did not open: {self.error!r}")

    def _read(self) -> None:
        try:
            for event in self._client.events(self._upid):
                self.events.append(event)
        except BaseException as exc:  # a closed stream ends with Unavailable
            self.error = exc

    def of(self, upid: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["upid"] == upid]

    def states(self, upid: str) -> list[str]:
        return [e["state"] for e in self.of(upid)]

    def close(self) -> None:
        sock = self._transport.socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        self._client.close()


@contextmanager
def _start_corral(config: str = ONE_NODE) -> Iterator[Corral]:
    engines = tomllib.loads(config)["engines"]
    with open_test_dispatcher(config) as handle:
        corral = Corral(handle.client, handle.home, handle.url, handle.token)
        for engine in engines:
            need = engine.get("base_need", 1)
            wait_until(
                lambda e=engine["id"], n=need: len(corral.ready_nodes(e)) >= n,
                f"{need} node(s) of engine {engine['id']} to join",
            )
        yield corral


StartCorral = Callable[..., AbstractContextManager[Corral]]


@pytest.fixture(scope="session")
def start_corral() -> StartCorral:
    """``with start_corral(config_toml) as corral:`` — a dispatcher whose nodes are up."""
    return _start_corral


@pytest.fixture(scope="module")
def module_corral(start_corral: StartCorral) -> Iterator[Corral]:
    """One dispatcher on one node (``ONE_NODE``) for all the tests of a module."""
    with start_corral() as running:
        yield running


@pytest.fixture
async def dispatcher(module_corral: Corral) -> AsyncIterator[AsyncClient]:
    """An ``AsyncClient`` of the module's dispatcher, for asyncio tests."""
    async with AsyncClient(module_corral.url, module_corral.token) as client:
        yield client


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a new, empty store of each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.database()


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    """A file path a process can wait for (``WAIT_FOR_GATE`` with ``GATE`` in its env)."""
    return tmp_path / "gate"
