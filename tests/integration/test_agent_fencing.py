"""Fencing on the wire: a real agent and test hubs playing dispatchers of several epochs.

A dispatcher is welcomed in its lease's epoch; the agent remembers the highest epoch it was
welcomed in, drops unobeyed a connection of an older one, and leaves a dispatcher that lets
its lease pass without a renewal. The dispatchers' own list tells it where to go next.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_agent_harness import Hub, is_alive, run, running_agent

from corral.wire.messages import Hello, Kill, Launch, Renewed, Welcome

SLEEPER = Launch("sleeper", 1, "/bin/sleep", ["100"], {}, None, "{}")


def address(hub: Hub) -> str:
    return f"127.0.0.1:{hub.port}"


def intruder(marker: Path) -> Launch:
    """A launch a deposed dispatcher sends; the marker file says whether it ever ran."""
    return Launch("intruder", 3, "/bin/sh", ["-c", f"touch {marker}; sleep 100"], {}, None, "{}")


async def until(condition: object, what: str, within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not callable(condition) or not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def running_in(hello: Hello) -> list[tuple[str, int]]:
    return [(r.upid, r.round) for r in hello.inventory if r.status == "running"]


@pytest.mark.timeout(30)
def test_an_agent_drops_unobeyed_a_deposed_dispatcher_that_still_accepts_it(
    tmp_path: Path,
) -> None:
    # The old dispatcher was deposed (epoch 2 began) but does not know it yet: it still
    # welcomes agents, in epoch 1, and sends them what its stale view asks for.
    marker = tmp_path / "intruder-ran"

    async def scenario() -> None:
        active = await Hub(welcome=Welcome(0.2, 2, 30.0)).start()
        deposed = await Hub(
            welcome=Welcome(0.2, 1, 30.0), orders=(Kill("sleeper", 1, 0.1), intruder(marker))
        ).start()
        hubs = [active, deposed]
        try:
            dispatchers = f"{address(active)},{address(deposed)}"
            async with running_agent(dispatchers, tmp_path) as agent:
                session = await active.next_session()
                session.send(SLEEPER)
                started = await session.report("sleeper", "running")
                assert started.pid is not None

                # The active dispatcher's link breaks and it takes no agent for a while: the
                # agent's next dial goes to the deposed one.
                active.stop_listening()
                await session.aclose()
                refused = await deposed.next_session()
                await asyncio.wait_for(refused.closed(), 5.0)
                await until(lambda: "a deposed dispatcher" in agent.log(), "the agent's warning")

                back = await Hub(welcome=Welcome(0.2, 2, 30.0)).start(active.port)
                hubs.append(back)
                rejoined = await back.next_session()
                assert running_in(rejoined.hello) == [("sleeper", 1)], "the Kill was obeyed"
                assert is_alive(started.pid)
                assert not marker.exists(), "the deposed dispatcher's launch was obeyed"
                assert agent.proc.returncode is None, "the agent exited instead of moving on"
        finally:
            for hub in hubs:
                await hub.close()

    run(scenario())


@pytest.mark.timeout(30)
def test_an_agent_leaves_a_dispatcher_that_stops_renewing_for_the_one_it_was_told_of(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        # A standby takes no agents until it takes the lease over; it has its port, though.
        standby = await Hub(welcome=Welcome(0.2, 2, 30.0)).start()
        standby.stop_listening()
        active = await Hub(welcome=Welcome(0.2, 1, 0.5, [])).start()
        hubs = [standby, active]
        try:
            # the agent is only told of the active dispatcher; its renewals add the standby
            async with running_agent(address(active), tmp_path) as agent:
                session = await active.next_session()
                session.send(SLEEPER)
                started = await session.report("sleeper", "running")
                for _ in range(4):
                    session.send(Renewed(1, [address(active), address(standby)]))
                    await asyncio.sleep(0.2)
                assert not session.conn.closed, "the agent left a dispatcher that renews"
                await until(lambda: "dispatchers: " in agent.log(), "the standby to be listed")

                # the active one freezes: no renewal, no answer, but its connection stays
                silent_since = asyncio.get_running_loop().time()
                taken_over = await Hub(welcome=Welcome(0.2, 2, 30.0)).start(standby.port)
                hubs.append(taken_over)
                joined = await asyncio.wait_for(taken_over.next_session(), 10.0)
                left_after = asyncio.get_running_loop().time() - silent_since
                assert 0.3 < left_after < 3.0, f"left the frozen dispatcher after {left_after}s"
                assert running_in(joined.hello) == [("sleeper", 1)]
                assert is_alive(started.pid)
        finally:
            for hub in hubs:
                await hub.close()

    run(scenario())
