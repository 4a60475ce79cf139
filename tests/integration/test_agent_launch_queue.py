"""The agent's launch queue: never more than ``--slots`` processes (4 here) at once; what
arrives beyond them waits and starts in order as slots free; Kill and Withdraw drop a
launch that has not started, and the Hello lists what waits."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_agent_harness import run, running_agent, running_hub

from corral.wire.messages import Forget, Kill, Launch, Withdraw

SLOTS = 4


def sleeper(upid: str) -> Launch:
    return Launch(upid, 1, "/bin/sleep", ["100"], {}, None, "{}")


@pytest.mark.timeout(30)
def test_launches_beyond_the_slots_wait_and_start_in_the_order_received(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub() as hub, running_agent(hub.port, tmp_path):
            session = await hub.next_session()
            session.send(*(sleeper(f"s{i}") for i in range(SLOTS + 2)))
            for i in range(SLOTS):
                await session.report(f"s{i}", "running")
            session.send(Kill("s0", 1, 5.0))
            await session.report("s0", "exited")
            # s0's slot goes to s4, the older of the two waiting; s5 waits on
            await session.report(f"s{SLOTS}", "running")
            port = hub.port
            await hub.close()

            async with running_hub(port) as again:
                session = await again.next_session()
                statuses = {r.upid: r.status for r in session.hello.inventory}
                assert statuses == {
                    "s0": "exited",
                    **{f"s{i}": "running" for i in range(1, SLOTS + 1)},
                    f"s{SLOTS + 1}": "queued",
                }

    run(scenario())


@pytest.mark.timeout(30)
def test_kill_and_withdraw_drop_a_launch_that_has_not_started(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub() as hub, running_agent(hub.port, tmp_path):
            session = await hub.next_session()
            session.send(*(sleeper(f"s{i}") for i in range(SLOTS + 2)))
            for i in range(SLOTS):
                await session.report(f"s{i}", "running")
            session.send(Withdraw("s4", 1), Kill("s5", 1, 5.0))
            withdrawn = await session.report("s4", "not_started")
            killed = await session.report("s5", "not_started")
            assert (withdrawn.pid, killed.pid) == (None, None)
            # a round that started is left alone: its report comes back
            session.send(Withdraw("s0", 1))
            await session.report("s0", "running")
            # the dropped rounds never start, though slots free; a new launch does
            session.send(Kill("s0", 1, 5.0), Forget("s4", 1), Forget("s5", 1))
            await session.report("s0", "exited")
            session.send(sleeper("s6"))
            await session.report("s6", "running")
            session.send(*(Kill(f"s{i}", 1, 5.0) for i in (1, 2, 3, 6)))
            for i in (1, 2, 3, 6):
                await session.report(f"s{i}", "exited")
            await session.aclose()
            session = await hub.next_session()
            assert {r.upid for r in session.hello.inventory} == {"s0", "s1", "s2", "s3", "s6"}

    run(scenario())
