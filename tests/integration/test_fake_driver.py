"""The fake driver under a real dispatcher (store, mapper, syncer, pool): simulated nodes
boot, join, run what they are given, die, and outlive a dispatcher restart."""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from corral.config import parse_config
from corral.core.ids import EngineId
from corral.dispatcher.runtime import Runtime, RuntimeSettings
from corral.dispatcher.service import Dispatcher
from corral.drivers.fake import FakeDriver, FakeFaults

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
TOKEN = "agent-token"

ELASTIC = """
[[engines]]
id = "sim"
driver = "fake"
slots = 2
launch_ahead = 0  # what finds no free slot waits in the dispatcher's queue
base_need = 1
maximum_vms = 5
idle_timeout = 0.5
heartbeat_period = 0.1
heartbeat_warning = 0.5
heartbeat_missing = 1.0
driver_options = { boot_delay = 0.05 }
"""


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@asynccontextmanager
async def dispatcher_on(
    home: Path, config: str, fake: FakeDriver | None = None
) -> AsyncIterator[tuple[Dispatcher, Runtime]]:
    settings = RuntimeSettings(
        home,
        parse_config(tomllib.loads(config)),
        TOKEN,
        drivers={EngineId("sim"): fake} if fake is not None else None,
    )
    runtime = Runtime(settings)
    try:
        yield await runtime.start(), runtime
    finally:
        await runtime.aclose()


async def until(probe: Callable[[], T | Awaitable[T]], what: str, within: float = 20.0) -> T:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = probe()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def define(dispatcher: Dispatcher, name: str, exec_: str, *argv: str) -> None:
    await dispatcher.create_definition(name, "exec", {"exec": exec_, "argv": list(argv)})


def test_a_burst_grows_the_simulated_pool_runs_everything_and_shrinks_back(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with dispatcher_on(tmp_path, ELASTIC) as (dispatcher, _):
            await define(dispatcher, "short", "/bin/sleep", "0.2")
            await define(dispatcher, "fails", "/bin/false")
            await dispatcher.schedule_processes(
                [{"upid": f"s{i}", "definition_id": "short"} for i in range(30)]
                + [{"upid": "f", "definition_id": "fails", "restart_mode": "NEVER"}]
            )
            grown = await until(
                lambda: len(dispatcher.list_nodes()) == 5 and dispatcher.list_nodes(),
                "the pool at maximum_vms",
            )
            assert {n["engine"] for n in grown} == {"sim"}
            for i in range(30):
                ended = await dispatcher.wait_process(f"s{i}", None, 20)
                assert ended["state"] == "800-EXITED"
                assert ended["starts"] == 1
            failed = await dispatcher.wait_process("f", None, 20)
            assert failed["state"] == "850-FAILED"
            assert failed["exit_code"] == 1
            await until(lambda: len(dispatcher.list_nodes()) == 1, "the pool back at base_need")

    run(scenario())


def test_a_lost_simulated_node_moves_its_service_and_a_terminated_one_ends(
    tmp_path: Path,
) -> None:
    fake = None

    async def scenario() -> None:
        nonlocal fake
        fake = FakeDriver(TOKEN, FakeFaults(boot_delay=0.05))
        async with dispatcher_on(tmp_path, ELASTIC, fake) as (dispatcher, _):
            await define(dispatcher, "forever", "/bin/sleep", "infinity")
            await dispatcher.schedule_process("svc", "forever", restart_mode="ALWAYS")
            first = await dispatcher.wait_process("svc", ["RUNNING"], 20)
            (instance,) = [i for i, a in fake.instances().items() if a.running]
            fake.lose(instance)
            moved = await until(
                lambda: (
                    (r := dispatcher.describe_process("svc"))["round"] > first["round"]
                    and r["state"] == "500-RUNNING"
                    and r
                ),
                "the service running again",
            )
            assert moved["assigned"] != first["assigned"]
            assert "lost" in moved["end_reason"]
            await dispatcher.terminate_process("svc")
            ended = await dispatcher.wait_process("svc", ["TERMINATED"], 20)
            assert ended["state"] == "700-TERMINATED"

    run(scenario())


def test_simulated_agents_outlive_a_dispatcher_restart_with_their_processes(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        fake = FakeDriver(TOKEN, FakeFaults(boot_delay=0.05))
        async with dispatcher_on(tmp_path, ELASTIC, fake) as (dispatcher, _):
            await define(dispatcher, "forever", "/bin/sleep", "infinity")
            await define(dispatcher, "short", "/bin/sleep", "0.3")
            await dispatcher.schedule_process("svc", "forever", restart_mode="ALWAYS")
            await dispatcher.schedule_process("job", "short", restart_mode="NEVER")
            before = await dispatcher.wait_process("svc", ["RUNNING"], 20)
            await dispatcher.wait_process("job", ["RUNNING"], 20)
        # the job ends while no dispatcher listens
        await asyncio.sleep(0.5)
        async with dispatcher_on(tmp_path, ELASTIC, fake) as (dispatcher, _):
            job = await dispatcher.wait_process("job", None, 20)
            assert job["state"] == "800-EXITED"
            assert job["starts"] == 1
            await until(lambda: dispatcher.list_nodes()[0]["connected"], "the agent back")
            after = dispatcher.describe_process("svc")
            assert (after["state"], after["round"], after["pid"]) == (
                "500-RUNNING",
                before["round"],
                before["pid"],
            )
            assert after["starts"] == 1

    run(scenario())


def test_a_cloud_quota_stops_the_pool_growing_and_says_so_in_waiting_reasons(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        fake = FakeDriver(TOKEN, FakeFaults(boot_delay=0.05, quota=2))
        async with dispatcher_on(tmp_path, ELASTIC, fake) as (dispatcher, _):
            await define(dispatcher, "forever", "/bin/sleep", "infinity")
            await dispatcher.schedule_processes(
                [{"upid": f"p{i}", "definition_id": "forever"} for i in range(6)]
            )
            waiting = await until(
                lambda: (
                    "cloud quota reached"
                    in (dispatcher.describe_process("p5")["waiting_reason"] or "")
                ),
                "the quota named in the waiting reason",
            )
            assert waiting
            # the second node's two may still be on their way to RUNNING
            assert await until(
                lambda: (
                    sum(p["state"] == "500-RUNNING" for p in dispatcher.describe_processes()) == 4
                ),
                "four processes running: two nodes of two slots",
            )
            attempts = fake.statistics.create_calls
            await asyncio.sleep(1.0)  # five ticks: the pool does not hammer the cloud
            assert fake.statistics.create_calls == attempts
            assert len(fake.instances()) == 2

    run(scenario())


def test_metrics_count_processes_nodes_boots_and_waits(tmp_path: Path) -> None:
    async def scenario() -> str:
        async with dispatcher_on(tmp_path, ELASTIC) as (dispatcher, _):
            await define(dispatcher, "forever", "/bin/sleep", "infinity")
            await dispatcher.schedule_processes(
                [{"upid": f"p{i}", "definition_id": "forever"} for i in range(4)]
            )
            for i in range(4):
                await dispatcher.wait_process(f"p{i}", ["RUNNING"], 20)
            return dispatcher.metrics().decode()

    text = run(scenario())
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples['corral_processes{state="500-RUNNING"}'] == 4
    assert samples["corral_queue_length"] == 0
    assert samples["corral_queue_to_running_seconds_count"] == 4
    assert samples['corral_boots_total{engine="sim",outcome="joined"}'] >= 2
    assert samples['corral_boot_seconds_count{engine="sim"}'] >= 2
    assert samples['corral_driver_calls_total{engine="sim",operation="create",outcome="ok"}'] >= 2
    assert samples['corral_slots{engine="sim",used="true"}'] == 4
    assert any(key.startswith('corral_nodes{engine="sim"') for key in samples)


def test_a_node_whose_process_cannot_be_killed_is_drained(tmp_path: Path) -> None:
    async def scenario() -> None:
        fake = FakeDriver(TOKEN, FakeFaults(boot_delay=0.05, unkillable_rate=1.0))
        quick = ELASTIC + "terminate_grace = 0.5\n"
        async with dispatcher_on(tmp_path, quick, fake) as (dispatcher, _):
            await define(dispatcher, "forever", "/bin/sleep", "infinity")
            await dispatcher.schedule_process("stuck", "forever", restart_mode="NEVER")
            running = await dispatcher.wait_process("stuck", ["RUNNING"], 20)
            await dispatcher.terminate_process("stuck")
            node = await until(
                lambda: [
                    n
                    for n in dispatcher.list_nodes()
                    if n["node_id"] == running["assigned"] and n["idle_behavior"] == "drain"
                ],
                "the node drained",
            )
            assert node[0]["used"] == 1  # kept while the process holds on
            assert dispatcher.describe_process("stuck")["state"] == "600-TERMINATING"

    run(scenario())


TYPED = """
[[instance_types]]
name = "small"
provider_type = "t3.small"
vcpus = 2
ram = 2048
price = 0.02

[[instance_types]]
name = "large"
provider_type = "t3.xlarge"
vcpus = 8
ram = 16384
price = 0.16

[[engines]]
id = "sim"
driver = "fake"
slots = 8
base_need = 0
maximum_vms = 4
idle_timeout = 0.5
heartbeat_period = 0.1
heartbeat_warning = 0.5
heartbeat_missing = 1.0
instance_types = ["large", "small"]
driver_options = { boot_delay = 0.05 }
"""


def test_processes_that_state_resources_get_the_cheapest_type_that_fits(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with dispatcher_on(tmp_path, TYPED) as (dispatcher, _):
            await dispatcher.create_definition(
                "big",
                "exec",
                {"exec": "/bin/sleep", "argv": ["infinity"], "resources": {"cpus": 3}},
            )
            await define(dispatcher, "forever", "/bin/sleep", "infinity")
            await dispatcher.schedule_process("b1", "big")
            await dispatcher.schedule_process("b2", "big")
            small = {"corral": {"resources": {"cpus": 1, "memory": 1024}}}
            await dispatcher.schedule_process("s1", "forever", configuration=small)
            placed = {}
            for upid in ("b1", "b2", "s1"):
                placed[upid] = (await dispatcher.wait_process(upid, ["RUNNING"], 20))["assigned"]
            nodes = {n["node_id"]: n for n in dispatcher.list_nodes()}
            # 3 + 3 cpus share one large node (8 cpus); the 1-cpu process fits beside them
            assert placed["b1"] == placed["b2"] == placed["s1"]
            assert nodes[placed["b1"]]["instance_type"] == "large"
            assert nodes[placed["b1"]]["price"] == 0.16
            too_big = {"corral": {"resources": {"cpus": 64}}}
            await dispatcher.schedule_process("x", "forever", configuration=too_big)
            reason = await until(
                lambda: dispatcher.describe_process("x")["waiting_reason"], "a waiting reason"
            )
            assert "64 cpus" in reason
            assert len(dispatcher.list_nodes()) == 1  # no type fits it: nothing boots for it
            assert "corral_pool_price 0.16" in dispatcher.metrics().decode()

    run(scenario())


def test_a_waiting_process_names_the_type_of_the_node_booting_for_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        slow = TYPED.replace("boot_delay = 0.05", "boot_delay = 2.0")
        async with dispatcher_on(tmp_path, slow) as (dispatcher, _):
            await dispatcher.create_definition(
                "big",
                "exec",
                {"exec": "/bin/sleep", "argv": ["infinity"], "resources": {"cpus": 3}},
            )
            await dispatcher.schedule_process("b1", "big")

            def waiting_reason() -> str:
                return dispatcher.describe_process("b1")["waiting_reason"] or ""

            reason = await until(
                lambda: "to boot" in waiting_reason() and waiting_reason(),
                "the reason to name the booting type",
            )
            assert "waiting for a node of type large to boot" in reason
            assert (await dispatcher.wait_process("b1", ["RUNNING"], 20))["state"] == "500-RUNNING"

    run(scenario())
