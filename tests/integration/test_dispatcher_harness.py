"""``corral.testing.open_test_dispatcher`` itself: it leaves nothing behind."""

from __future__ import annotations

import gc
import os
import warnings
from pathlib import Path

import pytest

from corral.testing.dispatcher import open_test_dispatcher

pytestmark = pytest.mark.timeout(30)

CONFIG = """
[[engines]]
id = "default"
allow_root = true  # the tests may run as root
slots = 2
base_need = 1
maximum_vms = 1
heartbeat_period = 0.2
heartbeat_warning = 1.0
heartbeat_missing = 2.0
"""


def children_of(pid: int) -> dict[int, str]:
    """The children of ``pid`` and their states (``Z`` for an unreaped zombie)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == pid:
            found[int(entry.name)] = fields[0]
    return found


def test_open_test_dispatcher_leaves_no_agent_running_or_unreaped() -> None:
    before = set(children_of(os.getpid()))
    try:
        with open_test_dispatcher(CONFIG) as handle:
            handle.client.create_definition("t", "exec", {"exec": "/bin/true"})
            handle.client.schedule_process("t1", "t")
            assert handle.client.wait_process("t1", timeout=20)["state"] == "800-EXITED"
            agents = set(children_of(os.getpid())) - before
            assert agents, "the local driver's agents are children of this process"
        # The handle, and with it the dispatcher's driver, may well outlive the block (a
        # test keeps it in a variable): its agents must be gone and reaped all the same.
        # A zombie left here is a Popen never waited for, which warns "subprocess N is
        # still running" whenever it is collected (an error under filterwarnings=error).
        left = {pid: state for pid, state in children_of(os.getpid()).items() if pid in agents}
        assert left == {}, f"agents left behind (state Z = exited but never reaped): {left}"
    finally:
        handle = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
