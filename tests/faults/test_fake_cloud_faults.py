"""Several hundred processes on a simulated cloud that fails in every way the fake driver
knows.

Injected at once: failed creates and destroys, a call rate limit, a quota below
maximum_vms, capacity errors, boots that never join, nodes that die, processes that crash.
Every process must end in the state its restart mode implies, no process may run on two
nodes at once, and the pool must return to base_need when the work is done.
"""

from __future__ import annotations

import asyncio
import tomllib
from collections import Counter
from pathlib import Path

import pytest

from corral.config import parse_config
from corral.core.ids import EngineId
from corral.dispatcher.runtime import Runtime, RuntimeSettings
from corral.drivers.fake import FakeDriver, FakeFaults

pytestmark = pytest.mark.timeout(120)

TOKEN = "agent-token"
CONFIG = """
[[engines]]
id = "sim"
driver = "fake"
slots = 4
base_need = 1
maximum_vms = 8
idle_timeout = 0.5
boot_timeout = 2.0
heartbeat_period = 0.1
heartbeat_warning = 0.5
heartbeat_missing = 1.0
terminate_grace = 0.5
"""
FAULTS = FakeFaults(
    boot_delay=0.1,
    create_error_rate=0.2,
    destroy_error_rate=0.2,
    calls_per_second=50,
    quota=6,
    capacity_error_rate=0.1,
    boot_failure_rate=0.1,
    node_death_rate=0.05,
    crash_rate=0.1,
    seed=7,
)
FAST_RESTARTS = {"corral": {"restart": {"backoff_initial": 0.05, "backoff_max": 0.2}}}
TERMINAL = {"700-TERMINATED", "800-EXITED", "850-FAILED", "900-REJECTED"}


def test_every_process_ends_as_its_restart_mode_says_under_every_cloud_fault(
    tmp_path: Path,
) -> None:
    fake = FakeDriver(TOKEN, FAULTS)
    settings = RuntimeSettings(
        tmp_path,
        parse_config(tomllib.loads(CONFIG)),
        TOKEN,
        drivers={EngineId("sim"): fake},
    )

    async def scenario() -> None:
        runtime = Runtime(settings)
        dispatcher = await runtime.start()
        try:
            await dispatcher.create_definition(
                "short", "exec", {"exec": "/bin/sleep", "argv": ["0.2"]}
            )
            await dispatcher.create_definition(
                "forever", "exec", {"exec": "/bin/sleep", "argv": ["infinity"]}
            )
            batch = (
                [
                    {"upid": f"never-{i}", "definition_id": "short", "restart_mode": "NEVER"}
                    for i in range(150)
                ]
                + [
                    {
                        "upid": f"abnormal-{i}",
                        "definition_id": "short",
                        "restart_mode": "ABNORMAL",
                        "configuration": FAST_RESTARTS,
                    }
                    for i in range(150)
                ]
                + [
                    {
                        "upid": f"always-{i}",
                        "definition_id": "forever",
                        "restart_mode": "ALWAYS",
                        "configuration": FAST_RESTARTS,
                    }
                    for i in range(8)
                ]
            )
            fake.fail_next("create", 2)
            fake.fail_next("destroy", 2)
            await dispatcher.schedule_processes(batch)
            # Besides the random deaths, two busy nodes die for sure.
            for _ in range(2):
                busy = await _busy_instance(fake)
                fake.lose(busy)

            for i in range(150):
                never = await dispatcher.wait_process(f"never-{i}", None, 90)
                assert never["state"] in ("800-EXITED", "850-FAILED"), never
                assert never["starts"] <= 1
                if never["state"] == "850-FAILED":
                    assert "signal 9" in never["end_reason"] or "lost" in never["end_reason"]
            for i in range(150):
                abnormal = await dispatcher.wait_process(f"abnormal-{i}", None, 90)
                assert abnormal["state"] == "800-EXITED", abnormal
                assert abnormal["exit_code"] == 0
            for i in range(8):
                always = await dispatcher.wait_process(f"always-{i}", ["RUNNING"], 90)
                assert always["state"] == "500-RUNNING"

            # No process runs on two nodes, and each runs where the dispatcher thinks it does.
            live: Counter[str] = Counter()
            for agent in fake.instances().values():
                if not agent.gone:
                    live.update(upid for upid, _ in agent.live_rounds())
            assert max(live.values(), default=0) <= 1

            for i in range(8):
                await dispatcher.terminate_process(f"always-{i}")
            for i in range(8):
                ended = await dispatcher.wait_process(f"always-{i}", None, 60)
                assert ended["state"] == "700-TERMINATED", ended
            assert all(p["state"] in TERMINAL for p in dispatcher.describe_processes())

            deadline = asyncio.get_running_loop().time() + 60
            while len(dispatcher.list_nodes()) != 1:
                assert asyncio.get_running_loop().time() < deadline, dispatcher.list_nodes()
                await asyncio.sleep(0.1)
            assert fake.statistics.errors >= 4
            assert fake.statistics.deaths >= 2
        finally:
            await runtime.aclose()
            fake.unbind()

    asyncio.run(scenario())


async def _busy_instance(fake: FakeDriver) -> str:
    while True:
        for instance_id, agent in fake.instances().items():
            if not agent.gone and agent.running:
                return instance_id
        await asyncio.sleep(0.05)
