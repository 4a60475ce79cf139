"""SIGKILL the dispatcher and start it again: nothing is lost, nothing runs twice.

Each test runs a real ``corral serve`` subprocess (see ``conftest.py``) whose agents outlive
it. Starts are counted from the start file the processes append to, not from the store.
The burst test kills at moments drawn from a seeded generator; the seed is printed, and
``CORRAL_FAULTS_SEED=<seed>`` replays the same delays.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from corral import Client
from corral.errors import CorralError, NotFound

SEED_ENV = "CORRAL_FAULTS_SEED"
BURST = 60
#: one SIGKILL per band of delays (seconds after the burst begins): while the burst is
#: being scheduled, while the first processes run, and while the queue drains
DELAY_BANDS = ((0.0, 0.1), (0.1, 0.6), (0.6, 1.2), (1.2, 2.0))

pytestmark = pytest.mark.timeout(60)


def _in_state(client: Client, upid: str, state: str) -> dict[str, Any] | None:
    record = client.describe_process(upid)
    return record if record["state"] == state else None


def test_running_services_survive_a_dispatcher_sigkill(served: Any) -> None:
    client = served.client()
    served.define("svc", "exec sleep 600")
    served.define("once", "exit 0")
    # one slot is left free for the new work scheduled after the restart
    upids = [f"svc-{i}" for i in range(served.SLOTS - 1)]
    for upid in upids:
        client.schedule_process(upid, "svc", restart_mode="ALWAYS")
    before = {
        upid: served.wait_until(
            lambda u=upid: _in_state(client, u, "500-RUNNING"), f"{upid} to be RUNNING"
        )
        for upid in upids
    }
    (node,) = served.connected_nodes()
    node_id = node["node_id"]
    agent_pid = served.agent_pid(node_id)
    agent_address = (served.home / "agent_address").read_text()
    pids = {upid: record["pid"] for upid, record in before.items()}
    assert all(served.pid_alive(pid) for pid in pids.values())

    served.kill()
    time.sleep(0.5)
    # while the dispatcher is down, the agent and its processes run on
    assert served.pid_alive(agent_pid), "the agent died with the dispatcher"
    dead = [upid for upid, pid in pids.items() if not served.pid_alive(pid)]
    assert not dead, f"processes died with the dispatcher: {dead}"

    served.start()
    client = served.client()
    assert (served.home / "agent_address").read_text() == agent_address
    rejoined = served.wait_node()
    assert rejoined["node_id"] == node_id, "the agent did not re-join as the same node"
    assert [n["node_id"] for n in client.list_nodes()] == [node_id]
    assert served.agent_pid(node_id) == agent_pid, "the agent was replaced, not re-joined"

    def check_untouched() -> None:
        for upid, old in before.items():
            now = client.describe_process(upid)
            assert now["state"] == "500-RUNNING", (upid, now["state"], now.get("end_reason"))
            assert (now["round"], now["pid"], now["assigned"]) == (
                old["round"],
                old["pid"],
                node_id,
            ), upid
            assert now["starts"] == 1, (upid, now["starts"])
            assert served.pid_alive(now["pid"]), upid
            assert served.starts_of(upid) == [(old["round"], old["pid"])], upid

    check_untouched()
    # still so once the node would have been declared missing, had it not re-joined
    time.sleep(served.HEARTBEAT_MISSING + 1.0)
    check_untouched()
    assert served.duplicate_starts() == []

    # new work is still dispatched, on the re-joined node
    client.schedule_process("after-restart", "once", restart_mode="NEVER")
    done = client.wait_process("after-restart", timeout=served.DEADLINE)
    assert done["state"] == "800-EXITED", done
    assert done["assigned"] == node_id
    assert len(served.starts_of("after-restart")) == 1


class _Burst:
    """Schedule ``upids`` from two threads; remember which calls were acknowledged."""

    def __init__(self, served: Any, upids: list[str]) -> None:
        self.acked: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        halves = [upids[0::2], upids[1::2]]
        clients = [Client(served.url, served.token, timeout=10.0) for _ in halves]
        self._threads = [
            threading.Thread(target=self._schedule, args=(c, h), daemon=True)
            for c, h in zip(clients, halves, strict=True)
        ]
        self._clients = clients

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        for thread in self._threads:
            thread.join(30)
        for client in self._clients:
            client.close()

    def _schedule(self, client: Client, upids: list[str]) -> None:
        for upid in upids:
            try:
                client.schedule_process(upid, "short", restart_mode="NEVER")
            except CorralError as exc:
                # the dispatcher is gone: this call and every later one is unacknowledged
                with self._lock:
                    self.failed.append((upid, str(exc)))
                return
            with self._lock:
                self.acked.append(upid)


def _existing(client: Client, upids: list[str]) -> dict[str, dict[str, Any]]:
    found = {}
    for upid in upids:
        with contextlib.suppress(NotFound):
            found[upid] = client.describe_process(upid)
    return found


def test_dispatcher_sigkill_at_random_moments_of_a_burst(served: Any) -> None:
    seed = int(os.environ.get(SEED_ENV) or random.randrange(2**32))
    rng = random.Random(seed)
    replay = f"replay with {SEED_ENV}={seed}"
    print(replay)
    served.define("short", "sleep 0.1")
    problems: list[str] = []
    for iteration, band in enumerate(DELAY_BANDS):
        # BURST processes on SLOTS slots: most of them queue behind the first few
        upids = [f"b{iteration}-{k:02d}" for k in range(BURST)]
        delay = rng.uniform(*band)
        burst = _Burst(served, upids)
        burst.start()
        time.sleep(delay)
        served.kill()
        burst.join()

        served.start()
        client = served.client()

        def settled(client: Client = client, upids: list[str] = upids) -> bool:
            existing = _existing(client, upids)
            return all(r["state"] in served.TERMINAL for r in existing.values())

        where = f"iteration {iteration}, SIGKILL after {delay:.3f} s"
        served.wait_until(settled, f"every process to end ({where}; {replay})", timeout=25.0)
        found = [f"{where}: {p}" for p in _burst_problems(served, client, upids, burst.acked)]
        problems.extend(found)
        print(f"{where}: {len(burst.acked)} acknowledged, {len(found)} problem(s)")
    assert not problems, f"{replay}\n" + "\n".join(problems)


def _burst_problems(served: Any, client: Client, upids: list[str], acked: list[str]) -> list[str]:
    """What went wrong with one burst: lost, unfinished or doubly started processes."""
    problems = []
    existing = _existing(client, upids)
    lost = sorted(set(acked) - set(existing))
    if lost:
        problems.append(f"acknowledged but lost: {lost}")
    starts = {u: served.starts_of(u) for u in upids}
    for upid, record in sorted(existing.items()):
        summary = {k: record[k] for k in ("state", "round", "exit_code", "starts", "pid")}
        if record["state"] != "800-EXITED" or record["exit_code"] != 0:
            problems.append(f"{upid} did not end EXITED: {summary} {record['end_reason']!r}")
        if [r for r, _ in starts[upid]] != [record["round"]]:
            problems.append(f"{upid} started {starts[upid]} (round, pid), not once: {summary}")
        if record["starts"] != 1:
            problems.append(f"{upid} counts {record['starts']} starts, not 1: {summary}")
    unknown = sorted(u for u in upids if starts[u] and u not in existing)
    if unknown:
        problems.append(f"started but not in the store: {unknown}")
    for upid, round_ in served.duplicate_starts():
        problems.append(f"{upid} started twice in round {round_}")
    running = [(u, p) for u in upids for _, p in starts[u] if served.pid_alive(p)]
    if running:
        problems.append(f"still running: {running}")
    nodes = [n["node_id"] for n in client.list_nodes()]
    if len(nodes) != 1:
        problems.append(f"the agent did not simply re-join; nodes: {nodes}")
    return problems


@pytest.mark.parametrize("gate_opens", ["while-down", "after-restart"])
def test_a_queued_backlog_is_dispatched_after_a_restart(served: Any, gate_opens: str) -> None:
    client = served.client()
    gate = served.home / "gate"
    served.define("blocker", f'while [ ! -e "{gate}" ]; do sleep 0.05; done')
    served.define("quick", "exit 0")
    blockers = [f"blocker-{i}" for i in range(served.SLOTS)]
    queued = [f"queued-{i}" for i in range(2 * served.SLOTS + 2)]
    for upid in blockers:
        client.schedule_process(upid, "blocker", restart_mode="NEVER")
    pids = [
        served.wait_until(
            lambda u=upid: _in_state(client, u, "500-RUNNING"), f"{upid} to be RUNNING"
        )["pid"]
        for upid in blockers
    ]
    for upid in queued:
        client.schedule_process(upid, "quick", restart_mode="NEVER")
    # launch_ahead defaults to twice the slots: the node's agent queues the first 2 × SLOTS
    # of them (it starts them itself as slots free, dispatcher or not); the others wait in
    # the store.
    ahead, waiting = queued[: 2 * served.SLOTS], queued[2 * served.SLOTS :]
    for upid in ahead:
        record = client.wait_process(upid, ["PENDING"], timeout=served.DEADLINE)
        assert record["state"] == "400-PENDING", record
    for upid in waiting:
        record = served.wait_until(
            lambda u=upid: _in_state(client, u, "300-WAITING"), f"{upid} to be WAITING"
        )
        assert record["waiting_reason"], record

    served.kill()
    if gate_opens == "while-down":
        gate.touch()
        served.wait_until(lambda: not any(served.pid_alive(p) for p in pids), "the blockers to end")
    served.start()
    client = served.client()
    if gate_opens == "after-restart":
        served.wait_node()
        for upid in ahead:
            assert client.describe_process(upid)["state"] == "400-PENDING", upid
        for upid in waiting:
            assert client.describe_process(upid)["state"] == "300-WAITING", upid
        gate.touch()
    for upid in [*blockers, *queued]:
        record = client.wait_process(upid, timeout=served.DEADLINE)
        assert record["state"] == "800-EXITED", record
        assert len(served.starts_of(upid)) == 1, (upid, served.starts_of(upid))
    assert served.duplicate_starts() == []


def test_a_process_that_runs_and_ends_while_the_dispatcher_is_down(served: Any) -> None:
    """The launch leaves, the dispatcher dies before the start is reported, the process
    runs and exits: after the restart the record shows one start, with its pid."""
    client = served.client()
    served.define("short", "sleep 0.2")
    (node,) = served.connected_nodes()
    agent_pid = served.agent_pid(node["node_id"])
    # a stopped agent cannot report the start: the launch waits in its socket
    os.kill(agent_pid, signal.SIGSTOP)
    try:
        client.schedule_process("blind", "short", restart_mode="NEVER")
        # wait_process answers once PENDING is durable, and the launch leaves at that commit
        pending = client.wait_process("blind", ["PENDING"], timeout=5.0)
        assert pending["state"] == "400-PENDING"
        served.kill()
    finally:
        os.kill(agent_pid, signal.SIGCONT)
    (started,) = served.wait_until(lambda: served.starts_of("blind"), "blind to start")
    served.wait_until(lambda: not served.pid_alive(started[1]), "blind to end")

    served.start()
    client = served.client()
    record = client.wait_process("blind", timeout=served.DEADLINE)
    assert record["state"] == "800-EXITED", record
    assert record["exit_code"] == 0, record
    assert record["round"] == pending["round"] == started[0], record
    assert served.starts_of("blind") == [started]
    assert (record["starts"], record["pid"]) == (1, started[1]), record
    assert record["started_at"] is not None, record


def test_a_process_being_terminated_when_the_dispatcher_dies_ends_terminated(
    served: Any,
) -> None:
    """terminate_process, then SIGKILL before the process is gone: after the restart it
    ends TERMINATED, is not brought back by its ALWAYS restart mode, and no longer runs."""
    client = served.client()
    # ignores SIGTERM, so it stays TERMINATING for terminate_grace (1 s) before the SIGKILL
    armed = served.home / "stubborn-armed"
    served.define("stubborn", f"trap '' TERM; touch {armed}; while true; do sleep 0.05; done")
    client.schedule_process("stubborn-1", "stubborn", restart_mode="ALWAYS")
    running = served.wait_until(
        lambda: _in_state(client, "stubborn-1", "500-RUNNING"), "stubborn-1 to be RUNNING"
    )
    served.wait_until(armed.exists, "stubborn-1 to ignore SIGTERM")
    terminating = client.terminate_process("stubborn-1")
    assert terminating["state"] == "600-TERMINATING", terminating
    served.kill()
    served.start()
    client = served.client()
    ended = client.wait_process("stubborn-1", timeout=served.DEADLINE)
    assert ended["state"] == "700-TERMINATED", ended
    assert ended["round"] == running["round"], ended
    served.wait_until(lambda: not served.pid_alive(running["pid"]), "the process to be gone", 5)
    time.sleep(0.5)
    assert client.describe_process("stubborn-1")["state"] == "700-TERMINATED"
    assert served.starts_of("stubborn-1") == [(running["round"], running["pid"])]


def test_a_sigkill_while_the_first_node_boots_leaves_one_node(unstarted: Any) -> None:
    """The dispatcher dies just after starting its first agent, before that agent joined:
    after the restart there is one node and one live agent, none left over."""
    served = unstarted
    served.start()
    nodes_dir = served.home / "nodes"

    def spawned() -> list[Path]:
        if not nodes_dir.is_dir():
            return []
        return [d for d in nodes_dir.iterdir() if (d / "instance.json").exists()]

    served.wait_until(spawned, "the first agent to be spawned", every=0.002)
    served.kill()
    served.start()
    client = served.client()
    node = served.wait_node()
    # long enough for the pool to list its instances and settle (a node lost, an orphan
    # destroyed, another booted) if it was going to
    time.sleep(served.HEARTBEAT_MISSING + 1.5)

    def live_agents() -> list[str]:
        return [d.name for d in spawned() if served.pid_alive(served.agent_pid(d.name))]

    assert [n["node_id"] for n in client.list_nodes()] == [node["node_id"]]
    assert live_agents() == [node["node_id"]]
    served.define("quick", "exit 0")
    client.schedule_process("after-boot", "quick", restart_mode="NEVER")
    assert client.wait_process("after-boot", timeout=served.DEADLINE)["state"] == "800-EXITED"
