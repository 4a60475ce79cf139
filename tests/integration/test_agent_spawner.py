"""The agent's spawn helper: it starts and reaps the agent's processes, leaves with the agent
killing nothing, and when it dies on its own the agent adopts its processes and starts
another."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from test_agent_harness import is_alive, run, running_agent, running_hub, wait_gone

from corral.agent.launcher import UNKNOWN_STATUS, kill_orphans
from corral.wire.messages import Kill, Launch

pytestmark = pytest.mark.timeout(30)

SLEEPER = Launch("sleeper", 1, "/bin/sleep", ["100"], {}, None, "{}")


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def helper_of(agent_pid: int) -> int:
    """The pid of the agent's spawn helper (its child running ``corral.agent.spawner``)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            if b"corral.agent.spawner" in cmdline and parent_of(int(entry)) == agent_pid:
                found.append(int(entry))
        except OSError:
            continue
    assert len(found) == 1, f"spawn helpers of agent {agent_pid}: {found}"
    return found[0]


def test_the_spawn_helper_is_the_parent_of_the_agent_s_processes(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub() as hub, running_agent(hub.port, tmp_path) as agent:
            session = await hub.next_session()
            session.send(SLEEPER)
            running = await session.report("sleeper", "running")
            assert running.pid is not None
            assert parent_of(running.pid) == helper_of(agent.proc.pid)
            session.send(Kill("sleeper", 1, 5.0))
            killed = await session.report("sleeper", "exited")
            # the helper reaped it: the status is known
            assert (killed.signal, killed.error) == (signal.SIGTERM, None)

    run(scenario())


def test_a_kill_of_a_round_still_starting_stops_it_once_it_has_started(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub() as hub, running_agent(hub.port, tmp_path):
            session = await hub.next_session()
            session.send(SLEEPER, Kill("sleeper", 1, 5.0))  # in one batch
            running = await session.report("sleeper", "running")
            exited = await session.report("sleeper", "exited")
            assert exited.signal == signal.SIGTERM
            await wait_gone(running.pid)  # type: ignore[arg-type]

    run(scenario())


def test_a_helper_that_dies_leaves_its_processes_adopted_and_another_takes_over(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with running_hub() as hub, running_agent(hub.port, tmp_path) as agent:
            session = await hub.next_session()
            session.send(SLEEPER)
            sleeper = await session.report("sleeper", "running")
            first = helper_of(agent.proc.pid)
            os.kill(first, signal.SIGKILL)
            await wait_gone(first)

            # a new helper starts the next launch
            session.send(Launch("after", 1, "/bin/sh", ["-c", "exit 7"], {}, None, "{}"))
            await session.report("after", "running")
            after = await session.report("after", "exited")
            assert after.exit_code == 7
            assert helper_of(agent.proc.pid) != first

            # the sleeper was adopted: still running, still killable, its status unknowable
            assert is_alive(sleeper.pid)  # type: ignore[arg-type]
            session.send(Kill("sleeper", 1, 5.0))
            killed = await session.report("sleeper", "exited")
            assert (killed.signal, killed.error) == (None, UNKNOWN_STATUS)
            await wait_gone(sleeper.pid)  # type: ignore[arg-type]
            assert "the spawn helper stopped" in agent.log()

    run(scenario())


def test_the_helper_leaves_with_the_agent_and_kills_nothing(tmp_path: Path) -> None:
    pids: list[int] = []

    async def scenario() -> None:
        async with (
            running_hub() as hub,
            running_agent(hub.port, tmp_path, orphans="keep") as agent,
        ):
            session = await hub.next_session()
            session.send(SLEEPER)
            sleeper = await session.report("sleeper", "running")
            pids.append(sleeper.pid)  # type: ignore[arg-type]
            helper = helper_of(agent.proc.pid)
            agent.proc.kill()
            await agent.wait()
            await asyncio.wait_for(wait_gone(helper), 5.0)

    run(scenario())
    assert is_alive(pids[0])
    assert kill_orphans(tmp_path / "state") == 1  # its record was written by the helper
