"""Network partitions: agents on hosts of their own (network namespaces), links cut and healed.

A real ``corral serve`` listens for agents on a bridge in the root namespace; each agent
runs in a namespace joined to the bridge by a veth pair (``corral.testing.netns``), started
with the command line the drivers use. Cutting a link takes the bridge's end of the pair
down: the agent and the dispatcher stop hearing each other, exactly as across a partition.

What each test injects and what it proves (starts are counted from the start file, and two
copies at once are looked for both by each new copy at its start and by polling ``/proc``):

- a cut shorter than the disconnect grace: the process stays RUNNING on its node, in its
  round, started once, not restarted elsewhere;
- a cut with ``replace``: a replacement runs elsewhere during the cut and, after the heal,
  exactly one copy runs (the newest round);
- a cut longer than the grace: the node is lost and the restart mode applies;
- an at-most-once process on a node cut off for good: its agent stops it on its own, and it
  starts again elsewhere only once that copy has certainly stopped;
- a node-exclusive process on a node that comes back: its old copy is gone before its new
  round starts there;
- an agent alone for ``stop_after_disconnect``: it stops its processes and reports how they
  ended when it reaches the dispatcher again.

Network namespaces need root and ``ip``; without them these tests are skipped, except in CI
(``CI=true``), where they fail.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.config import parse_config
from corral.testing.netns import NamespaceAgent, Network, open_network, unavailable

pytestmark = pytest.mark.timeout(90)

HEARTBEAT_MISSING = 2.0
CONFIG = """
[[engines]]
id = "default"
driver = "local"
slots = 4
# the agents are the test's, in their namespaces: the pool boots and retires nothing
base_need = 0
maximum_vms = 0
idle_timeout = 3600.0
heartbeat_period = 0.2
heartbeat_warning = 1.0
heartbeat_missing = 2.0
terminate_grace = 1.0
# the tests run as root, as network namespaces need
allow_root = true
"""
#: the agents stop their processes after this long without the dispatcher
STOP_AFTER = 1.5

#: as in conftest.py: each start appends "$CORRAL_UPID $CORRAL_ROUND $$" to $STARTS
RECORD_START = 'echo "$CORRAL_UPID $CORRAL_ROUND $$" >> "$STARTS"'
#: every copy, as it starts, notes any other live copy of its process in $OVERLAPS
CHECK_OVERLAP = (
    'while read u r p; do [ "$u" = "$CORRAL_UPID" ] && [ "$p" != "$$" ]'
    ' && kill -0 "$p" 2>/dev/null && echo "$CORRAL_UPID $$ overlaps $p" >> "$OVERLAPS";'
    ' done < "$STARTS"'
)


def _disconnect(**policy: Any) -> dict[str, Any]:
    return {"corral": {"disconnect": policy}}


class Lab:
    """The dispatcher on the bridge, agents in namespaces, and what the tests look at."""

    def __init__(self, served: Any, network: Network, config: str, tmp: Path) -> None:
        self.served = served
        self.network = network
        self.engine = parse_config(tomllib.loads(config)).engines[0]
        self.tmp = tmp
        self.agents: dict[str, NamespaceAgent] = {}
        self.overlaps = served.home / "overlaps.txt"
        self.client = served.client()

    def add_agent(self, node_id: str, **labels: str) -> NamespaceAgent:
        """Start an agent on a new host and wait until its node is connected."""
        address = (self.served.home / "agent_address").read_text().strip()
        port = address.rpartition(":")[2]
        agent = NamespaceAgent(
            self.network.add_host(),
            node_id,
            self.engine,
            f"{self.network.address}:{port}",
            (self.served.home / "agent_token").read_text().strip(),
            self.tmp / "agents" / node_id,
            labels,
        )
        self.agents[node_id] = agent
        agent.start()
        self.wait_node(node_id, lambda n: n["connected"] and n["health"] == "ok", "connected")
        return agent

    def close(self) -> None:
        for agent in self.agents.values():
            agent.stop()

    # -- nodes ----------------------------------------------------------------------------

    def node(self, node_id: str) -> dict[str, Any] | None:
        found = [n for n in self.client.list_nodes() if n["node_id"] == node_id]
        return found[0] if found else None

    def wait_node(
        self, node_id: str, check: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            node = self.node(node_id)
            return node if node is not None and check(node) else None

        return self.served.wait_until(probe, f"node {node_id} to be {what}")

    def wait_back(self, node_id: str) -> dict[str, Any]:
        return self.wait_node(
            node_id,
            lambda n: n["connected"] and n["health"] == "ok" and n["state"] in ("idle", "busy"),
            "back",
        )

    # -- processes --------------------------------------------------------------------------

    def define(self, definition_id: str, body: str) -> None:
        """``/bin/sh -c``: record the start, look for another live copy, run ``body``."""
        executable = {
            "exec": "/bin/sh",
            "argv": ["-c", f"{RECORD_START}; {CHECK_OVERLAP}; {body}"],
            "env": {"STARTS": str(self.served.starts_file), "OVERLAPS": str(self.overlaps)},
        }
        self.client.create_definition(definition_id, "exec", executable)

    def wait_state(self, upid: str, state: str, round_: int | None = None) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            record = self.client.describe_process(upid)
            if record["state"] != state or (round_ is not None and record["round"] != round_):
                return None
            # the tests count copies from the recorded starts
            if state == "500-RUNNING" and not self.served.has_started(record):
                return None
            return record

        return self.served.wait_until(probe, f"{upid} to be {state} (round {round_})")

    def alive(self, upid: str) -> list[int]:
        return [pid for _, pid in self.served.starts_of(upid) if self.served.pid_alive(pid)]

    def overlap_lines(self) -> list[str]:
        try:
            return self.overlaps.read_text().splitlines()
        except FileNotFoundError:
            return []

    @contextlib.contextmanager
    def watching(self, *upids: str) -> Iterator[dict[str, int]]:
        """Poll ``/proc`` every 10 ms while the block runs; the dict holds, per upid, the
        most copies ever seen alive at once."""
        most = dict.fromkeys(upids, 0)
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                for upid in upids:
                    most[upid] = max(most[upid], len(self.alive(upid)))
                stop.wait(0.01)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            yield most
        finally:
            stop.set()
            thread.join(5)


def _require_namespaces(reason: str | None) -> None:
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: the partition tests must run in CI")
    pytest.skip(reason)


@pytest.fixture
def open_lab(unstarted: Any, tmp_path: Path) -> Iterator[Callable[..., Lab]]:
    """``open_lab(stop_after_disconnect=None)``: the dispatcher started on a fresh bridge."""
    _require_namespaces(unavailable())
    with contextlib.ExitStack() as stack:

        def open_(stop_after_disconnect: float | None = None) -> Lab:
            try:
                network = stack.enter_context(open_network())
            except RuntimeError as exc:
                _require_namespaces(f"cannot make network namespaces here: {exc}")
                raise
            config = CONFIG
            if stop_after_disconnect is not None:
                config += f"stop_after_disconnect = {stop_after_disconnect}\n"
            (unstarted.home / "corral.toml").write_text(config)
            # the bridge is beyond loopback: the test's own network, nothing else reaches it
            unstarted.argv += ["--agent-listen", f"{network.address}:0", "--allow-remote"]
            unstarted.start()
            lab = Lab(unstarted, network, config, tmp_path)
            stack.callback(lab.close)
            return lab

        yield open_


def _cut_for(agent: NamespaceAgent, seconds: float) -> float:
    """Cut the agent's link; return when to heal it (the caller does, in a finally)."""
    agent.host.cut()
    return time.monotonic() + seconds


def _sleep_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))


def test_a_cut_shorter_than_the_grace_leaves_the_process_running_on_its_node(open_lab) -> None:
    lab = open_lab()
    a = lab.add_agent("host-a")
    lab.define("svc", "exec sleep 600")
    lab.client.schedule_process(
        "svc", "svc", restart_mode="ALWAYS", configuration=_disconnect(grace=20)
    )
    before = lab.wait_state("svc", "500-RUNNING")
    assert before["assigned"] == "host-a"
    lab.add_agent("host-b")  # where a replacement could go, and must not

    with lab.watching("svc") as most:
        heal_at = _cut_for(a, 4.0)
        try:
            lab.wait_node("host-a", lambda n: n["state"] == "disconnected", "disconnected")
            during = lab.client.describe_process("svc")
            assert (during["state"], during["round"], during["assigned"]) == (
                "500-RUNNING",
                before["round"],
                "host-a",
            )
            assert during["disconnected_since"] is not None
            _sleep_until(heal_at)
            still = lab.client.describe_process("svc")
            assert (still["state"], still["round"]) == ("500-RUNNING", before["round"])
        finally:
            a.host.heal()
        lab.wait_back("host-a")
        after = lab.wait_state("svc", "500-RUNNING", before["round"])
    assert after["assigned"] == "host-a"
    assert after["pid"] == before["pid"]
    assert after["disconnected_since"] is None
    assert lab.served.starts_of("svc") == [(before["round"], before["pid"])]
    assert lab.alive("svc") == [before["pid"]]
    assert most["svc"] == 1
    assert lab.overlap_lines() == []


def test_a_replacement_runs_during_the_cut_and_one_copy_survives_the_heal(open_lab) -> None:
    lab = open_lab()
    a = lab.add_agent("host-a")
    lab.define("svc", "exec sleep 600")
    lab.client.schedule_process(
        "svc", "svc", restart_mode="ALWAYS", configuration=_disconnect(replace=True)
    )
    before = lab.wait_state("svc", "500-RUNNING")
    assert before["assigned"] == "host-a"
    lab.add_agent("host-b")

    heal_at = _cut_for(a, 3.0)
    try:
        replacement = lab.wait_state("svc", "500-RUNNING", before["round"] + 1)
        assert replacement["assigned"] == "host-b"
        # nobody can reach host-a: its copy runs on beside the replacement until the heal
        assert sorted(lab.alive("svc")) == sorted([before["pid"], replacement["pid"]])
        _sleep_until(heal_at)
    finally:
        a.host.heal()
    lab.wait_back("host-a")
    lab.served.wait_until(lambda: not lab.served.pid_alive(before["pid"]), "the original to go")
    # the newest round survives; the original was killed by its own agent on the heal
    after = lab.client.describe_process("svc")
    assert (after["state"], after["round"], after["pid"]) == (
        "500-RUNNING",
        replacement["round"],
        replacement["pid"],
    )
    assert lab.alive("svc") == [replacement["pid"]]
    assert lab.served.starts_of("svc") == [
        (before["round"], before["pid"]),
        (replacement["round"], replacement["pid"]),
    ]


def test_a_cut_longer_than_the_grace_loses_the_node_and_the_restart_mode_applies(
    open_lab,
) -> None:
    lab = open_lab()
    a = lab.add_agent("host-a")
    lab.define("svc", "exec sleep 600")
    lab.client.schedule_process(
        "always", "svc", restart_mode="ALWAYS", configuration=_disconnect(grace=1.5)
    )
    lab.client.schedule_process(
        "never", "svc", restart_mode="NEVER", configuration=_disconnect(grace=1.5)
    )
    always = lab.wait_state("always", "500-RUNNING")
    never = lab.wait_state("never", "500-RUNNING")
    lab.add_agent("host-b")

    a.host.cut()
    try:
        lab.wait_node("host-a", lambda n: n["state"] == "disconnected", "disconnected")
        failed = lab.wait_state("never", "850-FAILED")
        assert "host-a" in failed["end_reason"]
        assert "grace (1.5 s)" in failed["end_reason"]
        again = lab.wait_state("always", "500-RUNNING", always["round"] + 1)
        assert again["assigned"] == "host-b"
        lab.served.wait_until(lambda: lab.node("host-a") is None, "host-a to be lost")
    finally:
        a.host.heal()
    # host-a joins again as a new node; what it still ran is stale, and killed
    lab.wait_back("host-a")
    lab.served.wait_until(
        lambda: not any(lab.served.pid_alive(r["pid"]) for r in (always, never)),
        "the copies on host-a to go",
    )
    assert lab.alive("always") == [again["pid"]]
    assert lab.alive("never") == []
    assert lab.client.describe_process("never")["state"] == "850-FAILED"
    assert len(lab.served.starts_of("always")) == 2
    assert len(lab.served.starts_of("never")) == 1


def test_an_at_most_once_process_starts_again_only_once_its_cut_off_copy_stopped(
    open_lab,
) -> None:
    lab = open_lab(stop_after_disconnect=STOP_AFTER)
    a = lab.add_agent("host-a")
    lab.define("svc", "exec sleep 600")
    lab.client.schedule_process(
        "once", "svc", restart_mode="ALWAYS", configuration=_disconnect(at_most_once=True)
    )
    before = lab.wait_state("once", "500-RUNNING")
    lab.add_agent("host-b")

    with lab.watching("once") as most:
        a.host.cut()
        try:
            fenced = lab.wait_state("once", "150-UNSCHEDULED_PENDING")
            assert "at-most-once" in fenced["waiting_reason"]
            assert "host-a" in fenced["waiting_reason"]
            # its agent, alone, stops it; only then may it run elsewhere
            again = lab.wait_state("once", "500-RUNNING", before["round"] + 1)
            assert again["assigned"] == "host-b"
            assert not lab.served.pid_alive(before["pid"])
        finally:
            a.host.heal()
        lab.wait_back("host-a")
        time.sleep(0.5)  # proving a negative: the reports of host-a start nothing more
    assert most["once"] == 1
    assert lab.overlap_lines() == []
    assert lab.alive("once") == [again["pid"]]
    assert lab.served.starts_of("once") == [
        (before["round"], before["pid"]),
        (again["round"], again["pid"]),
    ]


def test_a_node_exclusive_process_starts_on_its_healed_node_only_after_its_old_copy_died(
    open_lab,
) -> None:
    lab = open_lab()
    a = lab.add_agent("host-a", zone="a")
    # the old copy ignores SIGTERM: it lives on for terminate_grace after the heal
    lab.define("stubborn", "trap '' TERM; while :; do sleep 0.1; done")
    lab.client.schedule_process(
        "excl",
        "stubborn",
        restart_mode="ALWAYS",
        node_exclusive="gpu0",
        constraints={"zone": "a"},
    )
    before = lab.wait_state("excl", "500-RUNNING")
    lab.add_agent("host-b", zone="b")  # not a fit: the new round must wait for host-a

    with lab.watching("excl") as most:
        a.host.cut()
        try:
            lab.served.wait_until(lambda: lab.node("host-a") is None, "host-a to be lost")
            waiting = lab.wait_state("excl", "300-WAITING")
            assert waiting["round"] == before["round"] + 1
        finally:
            a.host.heal()
        again = lab.wait_state("excl", "500-RUNNING", before["round"] + 1)
    assert again["assigned"] == "host-a"
    assert not lab.served.pid_alive(before["pid"])
    assert most["excl"] == 1
    assert lab.overlap_lines() == []
    assert lab.alive("excl") == [again["pid"]]


def test_an_agent_alone_for_stop_after_disconnect_stops_its_processes(open_lab) -> None:
    lab = open_lab(stop_after_disconnect=STOP_AFTER)
    a = lab.add_agent("host-a")
    lab.define("svc", "exec sleep 600")
    lab.client.schedule_process(
        "svc", "svc", restart_mode="ALWAYS", configuration=_disconnect(grace=60)
    )
    before = lab.wait_state("svc", "500-RUNNING")

    cut = time.monotonic()
    a.host.cut()
    try:
        lab.served.wait_until(
            lambda: not lab.served.pid_alive(before["pid"]), "its agent to stop it"
        )
        stopped_after = time.monotonic() - cut
        # the dispatcher, within the grace, still counts it as running there
        during = lab.client.describe_process("svc")
        assert (during["state"], during["round"]) == ("500-RUNNING", before["round"])
    finally:
        a.host.heal()
    # the link counts as gone after heartbeat_missing unacknowledged, then STOP_AFTER more
    assert stopped_after >= HEARTBEAT_MISSING + STOP_AFTER
    lab.wait_back("host-a")
    # the kept report says how it ended; ALWAYS starts it again
    again = lab.wait_state("svc", "500-RUNNING", before["round"] + 1)
    assert again["end_reason"] == "killed by signal 15"
    assert "no dispatcher for" in a.log.read_text()
    assert lab.alive("svc") == [again["pid"]]
