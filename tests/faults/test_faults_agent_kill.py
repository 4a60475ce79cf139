"""SIGKILL a node's agent: its node is lost, its processes follow their restart modes.

An ALWAYS service runs again on a new node in a higher round; a NEVER one ends FAILED with a
reason naming the lost node; the OS processes of the dead agent are killed, so nothing runs
twice. Starts are counted from the start file (see ``conftest.py``).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(60)


def test_agent_sigkill_loses_the_node_and_restarts_by_policy(served: Any) -> None:
    client = served.client()
    served.define("svc", "exec sleep 600")
    client.schedule_process("always", "svc", restart_mode="ALWAYS")
    client.schedule_process("never", "svc", restart_mode="NEVER")

    def running(upid: str) -> dict[str, Any] | None:
        record = client.describe_process(upid)
        return record if record["state"] == "500-RUNNING" else None

    always = served.wait_until(lambda: running("always"), "always to be RUNNING")
    never = served.wait_until(lambda: running("never"), "never to be RUNNING")
    old_node = always["assigned"]
    assert never["assigned"] == old_node
    old_pids = [always["pid"], never["pid"]]
    assert all(served.pid_alive(pid) for pid in old_pids)
    agent_pid = served.agent_pid(old_node)

    os.kill(agent_pid, signal.SIGKILL)
    killed = time.monotonic()

    served.wait_until(
        lambda: old_node not in [n["node_id"] for n in client.list_nodes()],
        f"node {old_node} to be declared lost",
        timeout=served.HEARTBEAT_MISSING + 4.0,
        every=0.02,
    )
    print(f"node lost {time.monotonic() - killed:.2f} s after its agent was killed")

    failed = served.wait_until(
        lambda: (r := client.describe_process("never"))["state"] == "850-FAILED" and r,
        "never to be FAILED",
    )
    assert old_node in (failed["end_reason"] or ""), failed

    new_node = served.wait_node(exclude=frozenset({old_node}))["node_id"]
    again = served.wait_until(
        lambda: (r := running("always")) and r["round"] > always["round"] and r,
        "always to run again in a new round",
    )
    # the old processes were killed before anything ran again
    alive = [pid for pid in old_pids if served.pid_alive(pid)]
    assert not alive, f"processes of the dead agent still run: {alive}"
    assert again["assigned"] == new_node
    assert again["pid"] != always["pid"]
    served.wait_until(lambda: served.has_started(again), "the new round's start")
    assert served.starts_of("always") == [
        (always["round"], always["pid"]),
        (again["round"], again["pid"]),
    ]

    # the NEVER process stays FAILED and never runs again
    time.sleep(1.0)
    assert client.describe_process("never")["state"] == "850-FAILED"
    assert served.starts_of("never") == [(never["round"], never["pid"])]
    assert served.duplicate_starts() == []
    assert [n["node_id"] for n in client.list_nodes()] == [new_node]


def test_agent_sigkill_then_dispatcher_sigkill_still_loses_the_node_once(served: Any) -> None:
    """The agent dies, then the dispatcher, before the node was declared lost: the restarted
    dispatcher finds the node unknown, never hears from it, and loses it by its own clock."""
    client = served.client()
    served.define("svc", "exec sleep 600")
    client.schedule_process("always", "svc", restart_mode="ALWAYS")
    client.schedule_process("never", "svc", restart_mode="NEVER")
    # wait_process answers once RUNNING is committed: describe_process shows a change as soon
    # as it is applied, and the dispatcher killed below could take an uncommitted one along
    always = client.wait_process("always", ["RUNNING"], timeout=served.DEADLINE)
    never = client.wait_process("never", ["RUNNING"], timeout=served.DEADLINE)
    assert always["state"] == never["state"] == "500-RUNNING", (always, never)
    old_node = always["assigned"]

    os.kill(served.agent_pid(old_node), signal.SIGKILL)
    served.kill()
    served.start()
    client = served.client()

    failed = served.wait_until(
        lambda: (r := client.describe_process("never"))["state"] == "850-FAILED" and r,
        "never to be FAILED once its node is lost",
        timeout=served.HEARTBEAT_MISSING + 10.0,
    )
    assert old_node in (failed["end_reason"] or ""), failed
    again = served.wait_until(
        lambda: (
            (r := client.describe_process("always"))["state"] == "500-RUNNING"
            and r["round"] > always["round"]
            and r
        ),
        "always to run again in a new round on a new node",
    )
    assert again["assigned"] != old_node
    assert not served.pid_alive(always["pid"])
    assert not served.pid_alive(never["pid"])
    assert served.starts_of("never") == [(never["round"], never["pid"])]
    served.wait_until(lambda: served.has_started(again), "the new round's start")
    assert served.starts_of("always") == [
        (always["round"], always["pid"]),
        (again["round"], again["pid"]),
    ]
    assert served.duplicate_starts() == []
