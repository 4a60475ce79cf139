"""A real ``corral serve`` subprocess that the fault tests SIGKILL and start again.

``served`` gives a :class:`Served`: ``corral serve --home H --listen 127.0.0.1:0`` on a
fresh home with short heartbeats. ``served.kill()`` SIGKILLs it (its agents outlive it, as
they would in production); ``served.start()`` starts it again on the same home and reads
the API's new address from ``H/url``. On teardown the dispatcher is stopped and every local
agent and what it runs is destroyed, so no test leaves a process behind.

Processes under test are ``/bin/sh -c`` scripts that append ``$CORRAL_UPID $CORRAL_ROUND
$$`` to a *start file* when they start, so "started twice" is counted by the OS, not by the
dispatcher's own bookkeeping.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from corral import Client
from corral.errors import CorralError
from corral.testing.serve import ServeProcess, pid_alive, wait_until

T = TypeVar("T")

SLOTS = 4
CONFIG_TEMPLATE = """
[[engines]]
id = "default"
allow_root = true  # the tests may run as root
driver = "local"
slots = {slots}
base_need = 1
maximum_vms = 1
heartbeat_period = 0.2
heartbeat_warning = 1.0
heartbeat_missing = 2.0
terminate_grace = 1.0
"""
CONFIG = CONFIG_TEMPLATE.format(slots=SLOTS)
HEARTBEAT_MISSING = 2.0

#: every wait in these tests ends well before the per-test timeout
DEADLINE = 20.0

TERMINAL = frozenset({"700-TERMINATED", "800-EXITED", "850-FAILED", "900-REJECTED"})

#: the first line of every script under test: record this start in the start file
RECORD_START = 'echo "$CORRAL_UPID $CORRAL_ROUND $$" >> "$STARTS"'


class Served(ServeProcess):
    """``corral serve`` as a subprocess on ``home``; restartable on the same home.

    The helpers and constants are reachable from here too (``served.wait_until``,
    ``served.pid_alive``, ``served.TERMINAL``...), so test modules need not import this
    conftest (another directory's ``conftest`` module has the same name).
    """

    wait_until = staticmethod(wait_until)
    pid_alive = staticmethod(pid_alive)
    TERMINAL = TERMINAL
    DEADLINE = DEADLINE
    SLOTS = SLOTS
    HEARTBEAT_MISSING = HEARTBEAT_MISSING

    def __init__(self, home: Path, config: str = CONFIG, store_url: str | None = None) -> None:
        super().__init__(home, config, store_url=store_url)
        self.starts_file = home / "starts.txt"
        self._clients: list[Client] = []

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()
        super().stop()

    # -- talking to it --------------------------------------------------------------------

    def client(self, timeout: float = 10.0) -> Client:
        """A client of the running dispatcher (closed on teardown)."""
        client = Client(self.url, self.token, timeout=timeout)
        self._clients.append(client)
        return client

    def connected_nodes(self) -> list[dict[str, Any]]:
        with Client(self.url, self.token, timeout=5.0) as client:
            return [n for n in client.list_nodes() if n["connected"] and n["health"] == "ok"]

    def wait_node(self, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
        """Wait until a node (not in ``exclude``) is connected and healthy; return it."""

        def probe() -> dict[str, Any] | None:
            fresh = [n for n in self.connected_nodes() if n["node_id"] not in exclude]
            return fresh[0] if fresh else None

        return wait_until(probe, "a node to be connected and healthy")

    def agent_pid(self, node_id: str) -> int:
        record = json.loads((self.home / "nodes" / node_id / "instance.json").read_text())
        return int(record["pid"])

    # -- processes under test -------------------------------------------------------------

    def define(self, definition_id: str, body: str) -> str:
        """A definition of ``/bin/sh -c`` that records its start, then runs ``body``."""
        executable = {
            "exec": "/bin/sh",
            "argv": ["-c", f"{RECORD_START}; {body}"],
            "env": {"STARTS": str(self.starts_file)},
        }
        with Client(self.url, self.token) as client:
            client.create_definition(definition_id, "exec", executable)
        return definition_id

    def submitter(self, processes: list[dict[str, Any]], batch: int = 50) -> Submitter:
        """A started thread that schedules ``processes`` in batches, retrying each batch
        (with its request id) until the dispatcher, whichever run of it, acknowledges it."""
        submitter = Submitter(self, processes, batch)
        submitter.start()
        return submitter

    def starts(self) -> list[tuple[str, int, int]]:
        """Each recorded start: ``(upid, round, pid)``."""
        try:
            lines = self.starts_file.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            upid, round_, pid = line.split()
            out.append((upid, int(round_), int(pid)))
        return out

    def starts_of(self, upid: str) -> list[tuple[int, int]]:
        return [(r, p) for u, r, p in self.starts() if u == upid]

    def has_started(self, record: dict[str, Any]) -> bool:
        """Whether the round of ``record`` has recorded its start. RUNNING is reported once
        the process exists, a moment before its shell records itself."""
        return (record["round"], record["pid"]) in self.starts_of(record["upid"])

    def duplicate_starts(self) -> list[tuple[str, int]]:
        """``(upid, round)`` pairs that were started more than once."""
        counts = Counter((u, r) for u, r, _ in self.starts())
        return sorted(key for key, count in counts.items() if count > 1)


class Submitter(threading.Thread):
    """Schedules the load in batches; a batch is retried until the dispatcher answers.

    Each batch has its request id, so a retry whose first attempt was committed (its answer
    lost to a SIGKILL) runs nothing again, even what has already ended."""

    def __init__(self, served: Served, processes: list[dict[str, Any]], batch: int) -> None:
        super().__init__(daemon=True)
        self._served = served
        self._batches = [processes[i : i + batch] for i in range(0, len(processes), batch)]
        self.acknowledged: list[str] = []
        self.retries = 0

    def run(self) -> None:
        for number, batch in enumerate(self._batches):
            while True:
                try:
                    with Client(self._served.url, self._served.token, timeout=5.0) as client:
                        client.schedule_processes(batch, request_id=f"batch-{number}")
                    break
                except (CorralError, OSError):
                    self.retries += 1
                    time.sleep(0.05)
            self.acknowledged.extend(p["upid"] for p in batch)
            time.sleep(0.02)


@contextlib.contextmanager
def serving(
    home: Path, request: pytest.FixtureRequest, config: str = CONFIG, store_url: str | None = None
) -> Iterator[Served]:
    """A ``Served`` on ``home``, stopped (and its log shown if the test failed) at the end."""
    server = Served(home, config, store_url)
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(server.log_tail())


@pytest.fixture
def served(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Served]:
    """A started ``corral serve`` with its one node connected."""
    with serving(tmp_path / "home", request) as server:
        server.start()
        server.wait_node()
        yield server


@pytest.fixture
def make_served(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Served]]:
    """``make_served(slots=, store_url=, home=, top=)``: a started ``corral serve`` with its
    node connected: these tests' engine with ``slots`` slots, ``top`` (top-level config keys)
    before it, on a home of its own under ``tmp_path`` unless one is given."""
    homes = itertools.count()
    with contextlib.ExitStack() as stack:

        def make(
            slots: int = SLOTS,
            store_url: str | None = None,
            home: Path | None = None,
            top: str = "",
        ) -> Served:
            home = home or tmp_path / f"home-{next(homes)}"
            config = top + CONFIG_TEMPLATE.format(slots=slots)
            server = stack.enter_context(serving(home, request, config, store_url))
            server.start()
            server.wait_node()
            return server

        yield make


@pytest.fixture
def unstarted(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Served]:
    """A ``Served`` on a fresh home, not started yet (``unstarted.start()``)."""
    with serving(tmp_path / "home", request) as server:
        yield server


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
