"""Processes that misbehave: flooding their output, forking children that ignore SIGTERM.

What is injected: a process writes 64 MB to stdout as fast as it can while twenty short
processes are scheduled beside it; another forks twenty children that, like it, ignore
SIGTERM, and is then terminated.

What must hold: the flood neither starves the agent (the node stays healthy, the short
processes all run and end) nor loses output (the log holds every byte, its tail readable
through the API); the terminated process group is gone after the grace, every child too.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

from corral.agent.pidfiles import proc_identity

pytestmark = pytest.mark.timeout(90)

FLOOD = 7 * 9_142_857  # 64 MB of whole "corral\n" lines


def test_a_process_flooding_its_output_starves_nothing_and_loses_nothing(served: Any) -> None:
    client = served.client()
    served.define("flood", f"yes corral | head -c {FLOOD}")
    served.define("ok", "exit 0")
    client.schedule_process("flood", "flood", restart_mode="NEVER")
    served.wait_until(lambda: served.starts_of("flood"), "the flood to start")

    health: list[str] = []
    watching = threading.Event()

    def watch() -> None:
        with served.http() as http:
            while not watching.is_set():
                health.extend(n["health"] for n in http.get("/nodes").json())
                watching.wait(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    quick = [f"ok-{i}" for i in range(20)]
    for upid in quick:
        client.schedule_process(upid, "ok", restart_mode="NEVER")
    for upid in quick:
        assert client.wait_process(upid, ["EXITED"], timeout=30)["exit_code"] == 0
    flood = client.wait_process("flood", ["EXITED"], timeout=60)
    watching.set()
    watcher.join(5)

    assert flood["exit_code"] == 0
    assert health, "the node was never observed"
    assert set(health) == {"ok"}, f"the node was not always healthy: {sorted(set(health))}"
    tail = client.read_log("flood", "stdout", offset=FLOOD - 14)
    assert tail["data"] == "corral\ncorral\n"
    assert tail["size"] == FLOOD


def test_a_forking_process_that_ignores_sigterm_is_killed_with_all_its_children(
    served: Any,
) -> None:
    client = served.client()
    forks = "for i in $(seq 20); do sh -c \"trap '' TERM; exec sleep 600\" & done"
    served.define("stubborn", f"trap '' TERM; {forks}; wait")
    client.schedule_process("stubborn", "stubborn", restart_mode="NEVER")
    record = client.wait_process("stubborn", ["RUNNING"], timeout=20)
    pgid = record["pid"]

    def group() -> list[int]:
        """The live processes of the group (``ps -g`` would select a session)."""
        pids = (int(name) for name in os.listdir("/proc") if name.isdigit())
        return [
            pid
            for pid in pids
            if (identity := proc_identity(pid)) is not None
            and identity[1] == pgid
            and identity[0] != "Z"
        ]

    served.wait_until(lambda: len(group()) >= 21, "the twenty children to start")
    client.terminate_process("stubborn")
    ended = client.wait_process("stubborn", ["TERMINATED"], timeout=20)
    assert ended["state"] == "700-TERMINATED"
    served.wait_until(lambda: not group(), "every process of the group to be gone", timeout=5)
