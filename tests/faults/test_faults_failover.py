"""Two ``corral serve`` on one PostgreSQL: the active one dies or freezes, the standby takes over.

Each test runs two real dispatchers (subprocesses) on one database, sharing their tokens and
their local nodes' directory (as two dispatchers on one host would), with a lease of
``LEASE`` seconds. The node's agent is a real process; the processes under test append
``$CORRAL_UPID $CORRAL_ROUND $$`` to a start file, so "started twice" is counted by the OS.
What each test injects is in its name; what it proves is that every process keeps its
state, running ones keep running and are not started twice, queued ones are dispatched,
and clients and agents follow the active dispatcher.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral import Client
from corral.errors import CorralError
from corral.secretfile import load_or_create_token
from corral.testing.dispatcher import destroy_local_nodes
from corral.testing.postgres import PostgresServer
from corral.testing.serve import ServeProcess, pid_alive, wait_until

pytestmark = pytest.mark.timeout(90)

LEASE = 1.5
DEADLINE = 20.0
SLOTS = 4
TERMINAL = ("700-TERMINATED", "800-EXITED", "850-FAILED", "900-REJECTED")

CONFIG = """
[dispatcher]
lease_duration = {lease}

[[engines]]
id = "default"
driver = "local"
driver_options = {{ nodes_dir = "{nodes}" }}
slots = {slots}
base_need = 1
maximum_vms = 1
heartbeat_period = 0.2
heartbeat_warning = 1.0
heartbeat_missing = 4.0
terminate_grace = 1.0
allow_root = true  # the tests may run as root
"""


class Pair:
    """Two dispatchers of one store, ``a`` started first (so active), ``b`` standing by."""

    def __init__(self, root: Path, store_url: str) -> None:
        self.nodes = root / "nodes"
        self.starts_file = root / "starts.txt"
        self.gate = root / "gate"
        config = CONFIG.format(lease=LEASE, nodes=self.nodes, slots=SLOTS)
        homes = [root / "a", root / "b"]
        for home in homes:
            home.mkdir(parents=True)
        # the dispatchers of one store share their tokens: agents and clients use them all
        for name in ("token", "agent_token"):
            secret = load_or_create_token(homes[0] / name)
            (homes[1] / name).write_text(secret + "\n")
            (homes[1] / name).chmod(0o600)
        self.a, self.b = (ServeProcess(h, config, store_url=store_url) for h in homes)

    @property
    def urls(self) -> str:
        return f"{self.a.url},{self.b.url}"

    def client(self, urls: str | None = None) -> Client:
        return Client(urls or self.urls, self.a.token, timeout=5.0)

    def health(self, serve: ServeProcess) -> dict[str, Any]:
        return httpx.get(f"{serve.url}/health", timeout=2.0).json()  # type: ignore[no-any-return]

    def wait_role(
        self, serve: ServeProcess, role: str, active: str | None = None
    ) -> dict[str, Any]:
        """Wait until ``serve`` has ``role`` (and names ``active`` as the active one)."""

        def probe() -> dict[str, Any] | None:
            with contextlib.suppress(httpx.HTTPError):
                health = self.health(serve)
                if health.get("role") == role and active in (None, health.get("active")):
                    return health
            return None

        return wait_until(probe, f"{serve.home.name} to be {role}", DEADLINE)

    def node(self) -> str:
        (node,) = [p.name for p in self.nodes.iterdir()]
        return node

    def agent_log(self) -> str:
        return (self.nodes / self.node() / "agent.log").read_text(errors="replace")

    def connected(self, serve: ServeProcess) -> list[str]:
        with Client(serve.url, serve.token, timeout=2.0) as client:
            return [n["node_id"] for n in client.list_nodes() if n["connected"]]

    def define(self, client: Client, definition_id: str, body: str) -> None:
        script = f'echo "$CORRAL_UPID $CORRAL_ROUND $$" >> "$STARTS"; {body}'
        env = {"STARTS": str(self.starts_file), "GATE": str(self.gate)}
        client.create_definition(
            definition_id, "exec", {"exec": "/bin/sh", "argv": ["-c", script], "env": env}
        )

    def starts(self) -> Counter[tuple[str, int]]:
        with contextlib.suppress(FileNotFoundError):
            lines = self.starts_file.read_text().splitlines()
            return Counter((u, int(r)) for u, r, _ in (line.split() for line in lines))
        return Counter()

    def stop(self) -> None:
        for serve in (self.a, self.b):
            if serve.proc is not None and serve.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(serve.proc.pid, signal.SIGCONT)  # a frozen one must hear SIGTERM
            serve.stop()
        destroy_local_nodes(self.a.home, self.nodes)

    def log_tail(self) -> str:
        tails = [self.a.log_tail(), self.b.log_tail()]
        with contextlib.suppress(OSError, ValueError):
            tails.append("--- agent\n" + "\n".join(self.agent_log().splitlines()[-40:]))
        return "\n".join(tails)


@pytest.fixture
def pair(
    tmp_path: Path, postgres: PostgresServer, request: pytest.FixtureRequest
) -> Iterator[Pair]:
    """Two dispatchers on a fresh database: ``a`` active with its node joined, ``b`` standing
    by, and the agent told of both."""
    started = Pair(tmp_path, postgres.database())
    try:
        started.a.start()
        started.wait_role(started.a, "active")
        started.b.start()
        started.wait_role(started.b, "standby", active=started.a.url)
        wait_until(lambda: started.connected(started.a), "the node to join a")
        b_agents = (started.b.home / "agent_address").read_text().strip()
        # the active dispatcher tells its agents of the standby at its next renewal
        wait_until(lambda: b_agents in started.agent_log(), "the agent to hear of b")
        yield started
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is None or report.failed:
            print(started.log_tail())
        started.stop()


def in_state(client: Client, upid: str, state: str) -> dict[str, Any] | None:
    record = client.describe_process(upid)
    return record if record["state"] == state else None


def test_a_standby_takes_over_a_sigkilled_active_dispatcher(pair: Pair) -> None:
    client = pair.client()
    pair.define(client, "svc", "exec sleep 600")
    pair.define(client, "job", 'while [ ! -e "$GATE" ]; do sleep 0.05; done')
    services = ["svc-1", "svc-2"]
    for upid in services:
        client.schedule_process(upid, "svc", restart_mode="ALWAYS")
    # the jobs fill the other two slots; the queued ones wait behind them
    for upid in ("job-1", "job-2", "queued-1", "queued-2"):
        client.schedule_process(upid, "job", restart_mode="NEVER", queueing_mode="ALWAYS")
    before = {
        upid: wait_until(lambda u=upid: in_state(client, u, "500-RUNNING"), f"{upid} to run")
        for upid in [*services, "job-1", "job-2"]
    }
    # waiting in the dispatcher's queue, or launched ahead into the agent's, but not started
    for upid in ("queued-1", "queued-2"):
        assert client.describe_process(upid)["state"] in ("300-WAITING", "400-PENDING")
    assert not {u for u, _ in pair.starts()} & {"queued-1", "queued-2"}
    node = pair.node()

    killed_at = time.monotonic()
    pair.a.kill()
    active = pair.wait_role(pair.b, "active")
    active_after = time.monotonic() - killed_at
    wait_until(lambda: pair.connected(pair.b) == [node], "the agent to join b")
    joined_after = time.monotonic() - killed_at
    print(
        f"takeover: b active after {active_after:.2f}s, the node joined after {joined_after:.2f}s"
    )
    assert active["epoch"] == 2
    assert joined_after < 4 * LEASE + 2.0, f"the takeover took {joined_after:.2f}s"

    # the same client follows the new active dispatcher
    for upid, old in before.items():
        now = client.describe_process(upid)
        assert (now["state"], now["round"], now["pid"]) == ("500-RUNNING", old["round"], old["pid"])
        assert pid_alive(now["pid"]), upid
    assert client.url == pair.b.url

    # the queued processes are dispatched by the new active dispatcher once slots free up
    pair.gate.touch()
    for upid in ("job-1", "job-2", "queued-1", "queued-2"):
        assert client.wait_process(upid, timeout=DEADLINE)["state"] == "800-EXITED", upid
    client.schedule_process("after", "job", restart_mode="NEVER")
    assert client.wait_process("after", timeout=DEADLINE)["state"] == "800-EXITED"
    starts = pair.starts()
    assert [key for key, count in starts.items() if count > 1] == []
    assert set(starts) == {
        (u, 1) for u in [*services, "job-1", "job-2", "queued-1", "queued-2", "after"]
    }

    # the old active dispatcher, started again, stands by
    pair.a.start()
    standby = pair.wait_role(pair.a, "standby", active=pair.b.url)
    assert standby["epoch"] == 2
    with (
        pair.client(pair.a.url) as only_a,
        pytest.raises(CorralError, match="standing by: the active one is"),
    ):
        only_a.list_nodes()
    client.close()


def test_a_frozen_active_dispatcher_is_deposed_and_fenced(pair: Pair) -> None:
    client = pair.client()
    pair.define(client, "svc", "exec sleep 600")
    client.schedule_process("svc-1", "svc", restart_mode="ALWAYS")
    before = wait_until(lambda: in_state(client, "svc-1", "500-RUNNING"), "svc-1 to run")
    node = pair.node()
    assert pair.a.proc is not None

    os.kill(pair.a.proc.pid, signal.SIGSTOP)
    try:
        pair.wait_role(pair.b, "active")
        # the agent leaves the silent dispatcher once its lease has passed unrenewed
        wait_until(lambda: pair.connected(pair.b) == [node], "the agent to join b")
        with pair.client(pair.b.url) as on_b:
            on_b.schedule_process("svc-2", "svc", restart_mode="ALWAYS")
            wait_until(lambda: in_state(on_b, "svc-2", "500-RUNNING"), "svc-2 to run")
    finally:
        os.kill(pair.a.proc.pid, signal.SIGCONT)

    # a wakes up in epoch 1, finds its lease gone, and stands by without acting
    standby = pair.wait_role(pair.a, "standby", active=pair.b.url)
    assert standby["epoch"] == 2
    time.sleep(LEASE)
    with pair.client(pair.b.url) as on_b:
        svc1 = on_b.describe_process("svc-1")
        assert (svc1["state"], svc1["pid"], svc1["round"]) == (
            "500-RUNNING",
            before["pid"],
            before["round"],
        )
        assert on_b.describe_process("svc-2")["state"] == "500-RUNNING"
        assert pair.connected(pair.b) == [node]
    assert pair.starts() == Counter({("svc-1", 1): 1, ("svc-2", 1): 1})
    assert "deposed in epoch 1" in pair.a.log_tail(200)
    assert "has not renewed its lease" in pair.agent_log()
    client.close()


def test_a_stopped_active_dispatcher_hands_over_at_once(pair: Pair) -> None:
    # SIGTERM (an operator's restart, an upgrade): the lease is released, not left to expire
    client = pair.client()
    pair.define(client, "svc", "exec sleep 600")
    client.schedule_process("svc-1", "svc", restart_mode="ALWAYS")
    before = wait_until(lambda: in_state(client, "svc-1", "500-RUNNING"), "svc-1 to run")
    stopped_at = time.monotonic()
    assert pair.a.proc is not None
    pair.a.proc.send_signal(signal.SIGTERM)
    assert pair.a.proc.wait(10) == 0
    pair.wait_role(pair.b, "active")
    took = time.monotonic() - stopped_at
    assert took < LEASE, f"the standby took over {took:.2f}s after a clean stop"
    wait_until(lambda: pair.connected(pair.b) == [pair.node()], "the agent to join b")
    after = client.describe_process("svc-1")
    assert (after["state"], after["pid"]) == ("500-RUNNING", before["pid"])
    assert pair.starts() == Counter({("svc-1", 1): 1})
    client.close()


TAKEOVERS = 20


class _Submitter(threading.Thread):
    """Schedules ``processes`` in batches through both dispatchers' URLs, retrying each
    batch (with its request id: a retry runs nothing again) until one of them acknowledges
    it."""

    def __init__(self, pair: Pair, processes: list[dict[str, Any]]) -> None:
        super().__init__(daemon=True)
        self._pair = pair
        self._batches = [processes[i : i + 25] for i in range(0, len(processes), 25)]
        self.retries = 0

    def run(self) -> None:
        for number, batch in enumerate(self._batches):
            while True:
                try:
                    with self._pair.client() as client:
                        client.schedule_processes(batch, request_id=f"batch-{number}")
                    break
                except (CorralError, OSError):
                    self.retries += 1
                    time.sleep(0.1)


@pytest.mark.timeout(300)
def test_twenty_takeovers_under_a_load_lose_nothing_and_run_nothing_twice(pair: Pair) -> None:
    """SIGKILL whichever dispatcher is active, twenty times, while 1,000 processes of mixed
    restart and queueing modes are scheduled: each time the other takes over, and the killed
    one comes back as the standby."""
    with pair.client() as client:
        pair.define(client, "ok", "exit 0")
        pair.define(client, "bad", "exit 3")
        pair.define(client, "svc", "exec sleep 600")
        pair.define(client, "flaky", '[ "$CORRAL_ROUND" -gt 1 ] && exit 0; exit 1')
    fast = {"corral": {"restart": {"backoff_initial": 0.05, "backoff_max": 0.2}}}
    kinds: list[tuple[str, int, dict[str, Any]]] = [
        ("ok", 500, {"restart_mode": "NEVER"}),
        ("bad", 200, {"restart_mode": "NEVER"}),
        ("flaky", 150, {"restart_mode": "ABNORMAL", "configuration": fast}),
        ("ok", 148, {"restart_mode": "NEVER", "queueing_mode": "START_ONLY"}),
        ("svc", 2, {"restart_mode": "ALWAYS"}),
    ]
    processes = [
        {"upid": f"{name}-{mode.get('queueing_mode', 'A')[0]}{i}", "definition_id": name, **mode}
        for name, count, mode in kinds
        for i in range(count)
    ]
    assert len(processes) == 1000
    submitter = _Submitter(pair, processes)
    submitter.start()
    serves = {pair.a.home.name: pair.a, pair.b.home.name: pair.b}
    active, standby = pair.a, pair.b
    for _ in range(TAKEOVERS):
        time.sleep(0.3)
        active.kill()
        pair.wait_role(standby, "active")
        active.start()
        pair.wait_role(active, "standby", active=standby.url)
        active, standby = standby, active
    submitter.join(120)
    assert not submitter.is_alive(), "the load was never fully acknowledged"
    assert set(serves) == {active.home.name, standby.home.name}

    upids = [p["upid"] for p in processes]

    def settled() -> dict[str, dict[str, Any]] | None:
        with pair.client() as reader:
            records = {r["upid"]: r for r in reader.describe_processes()}
        for upid in upids:
            state = records.get(upid, {}).get("state")
            if state not in (("500-RUNNING",) if upid.startswith("svc") else TERMINAL):
                return None
        return records

    records = wait_until(settled, "every process to settle", 90.0)
    assert not [key for key, count in pair.starts().items() if count > 1], "a round ran twice"
    ran = pair.starts()
    wrong = []
    for upid in upids:
        record, starts = records[upid], sum(c for (u, _), c in ran.items() if u == upid)
        kind = upid.split("-")[0]
        if kind == "flaky" and (record["state"] != "800-EXITED" or starts < 2):
            wrong.append((upid, record["state"], record["exit_code"], starts))
        expected = {"ok": ("800-EXITED", 0), "bad": ("850-FAILED", 3)}.get(kind)
        if expected is not None and ((record["state"], record["exit_code"]), starts) != (
            expected,
            1,
        ):
            wrong.append((upid, record["state"], record["exit_code"], starts))
        if upid.startswith("svc") and not pid_alive(record["pid"]):
            wrong.append((upid, "its recorded copy is not running", record["pid"]))
    assert not wrong, f"{len(wrong)} wrong: {wrong[:10]}"
    print(f"{TAKEOVERS} takeovers; {submitter.retries} batch retries")
