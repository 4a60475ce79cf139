"""Processes outlive connections and agents: reconnection, adoption after a restart, orphans."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from test_agent_harness import (
    is_alive,
    make_fifo,
    read_fifo,
    run,
    running_agent,
    running_hub,
    wait_gone,
)

from corral.agent.launcher import ENDED_UNWATCHED, UNKNOWN_STATUS, kill_orphans
from corral.agent.pidfiles import (
    StateDirBusy,
    has_pidfs,
    lock_state_dir,
    proc_identity,
)
from corral.wire.messages import Forget, Kill, Launch

SLEEPER = Launch("sleeper", 1, "/bin/sleep", ["100"], {}, None, "{}")


def waiter(fifo: Path) -> Launch:
    """A process that exits with code 7 once the test writes a line to ``fifo``."""
    return Launch(
        "waiter", 1, "/bin/sh", ["-c", 'read x < "$1"; exit 7', "sh", str(fifo)], {}, None, "{}"
    )


def open_trigger(fifo: Path) -> int:
    # O_RDWR never blocks on a FIFO and keeps it open, so a line written now waits for the
    # child however late it opens its end.
    os.mkfifo(fifo)
    return os.open(fifo, os.O_RDWR)


@pytest.mark.timeout(30)
def test_after_the_dispatcher_comes_back_the_hello_carries_what_was_missed(
    tmp_path: Path,
) -> None:
    trigger = open_trigger(tmp_path / "go")

    async def scenario() -> None:
        async with running_hub() as hub, running_agent(hub.port, tmp_path):
            session = await hub.next_session()
            session.send(SLEEPER, waiter(tmp_path / "go"))
            sleeper = await session.report("sleeper", "running")
            waiting = await session.report("waiter", "running")
            port = hub.port
            await hub.close()  # the dispatcher dies: connection and listener gone

            os.write(trigger, b"go\n")  # the waiter exits while nobody listens
            await wait_gone(waiting.pid)  # type: ignore[arg-type]

            async with running_hub(port) as new_hub:
                session = await new_hub.next_session()
                inventory = {r.upid: r for r in session.hello.inventory}
                assert inventory["sleeper"] == sleeper
                assert inventory["waiter"].status == "exited"
                assert inventory["waiter"].exit_code == 7
                assert inventory["waiter"].pid == waiting.pid

                session.send(Forget("waiter", 1), Forget("sleeper", 1))
                # Forgetting a running round is refused: its report comes back.
                assert await session.report("sleeper", "running") == sleeper
                await session.aclose()  # and the connection drops once more
                session = await new_hub.next_session()
                assert session.hello.inventory == [sleeper]

                session.send(Kill("sleeper", 1, 5.0))
                assert (await session.report("sleeper", "exited")).signal == signal.SIGTERM

    try:
        run(scenario())
    finally:
        os.close(trigger)


@pytest.mark.timeout(30)
def test_an_agent_alone_for_stop_after_disconnect_stops_its_processes_and_keeps_the_reports(
    tmp_path: Path,
) -> None:
    alone = 1.0
    options = ("--stop-after-disconnect", str(alone), "--stop-grace", "5")

    async def scenario() -> None:
        async with (
            running_hub() as hub,
            running_agent(hub.port, tmp_path, args=("--allow-root", *options)),
        ):
            session = await hub.next_session()
            # four slots: three more sleepers fill them, and a fifth launch waits its turn
            others = [replace(SLEEPER, upid=f"other-{i}") for i in range(4)]
            session.send(SLEEPER, *others)
            sleeper = await session.report("sleeper", "running")
            for launch in others[:3]:
                await session.report(launch.upid, "running")
            port = hub.port

            # a short absence: the agent is back within the time it allows itself
            await hub.close()
            async with running_hub(port) as new_hub:
                session = await new_hub.next_session()
                await asyncio.sleep(alone * 1.5)  # longer than alone, counted from the drop
                assert is_alive(sleeper.pid)  # type: ignore[arg-type]
                await new_hub.close()

            # a long one: the agent stops the process itself
            await asyncio.wait_for(wait_gone(sleeper.pid), alone + 5.0)  # type: ignore[arg-type]
            async with running_hub(port) as last_hub:
                session = await last_hub.next_session()
                inventory = {r.upid: r for r in session.hello.inventory}
                stopped = ["sleeper", "other-0", "other-1", "other-2"]
                for upid in stopped:
                    assert (inventory[upid].status, inventory[upid].signal) == (
                        "exited",
                        signal.SIGTERM,
                    )
                # the queued launch never started in the slots the others freed
                assert inventory["other-3"].status == "not_started"
                assert inventory["other-3"].pid is None

    run(scenario())


@pytest.mark.timeout(30)
def test_a_restarted_agent_adopts_the_processes_the_last_one_left(tmp_path: Path) -> None:
    trigger = open_trigger(tmp_path / "go")

    async def scenario() -> None:
        async with running_hub() as hub:
            async with running_agent(hub.port, tmp_path, orphans="keep") as agent:
                session = await hub.next_session()
                session.send(SLEEPER, waiter(tmp_path / "go"))
                sleeper = await session.report("sleeper", "running")
                waiting = await session.report("waiter", "running")
                agent.proc.send_signal(signal.SIGTERM)
                assert await agent.wait() == 0
                assert "2 processes keep running" in agent.log()
            assert is_alive(sleeper.pid)  # type: ignore[arg-type]

            os.write(trigger, b"go\n")  # ends while no agent watches
            await wait_gone(waiting.pid)  # type: ignore[arg-type]

            async with running_agent(hub.port, tmp_path):
                session = await hub.next_session()
                inventory = {r.upid: r for r in session.hello.inventory}
                assert inventory["sleeper"] == sleeper
                ended = inventory["waiter"]
                assert (ended.status, ended.exit_code, ended.error) == (
                    "exited",
                    None,
                    ENDED_UNWATCHED,
                )

                session.send(Kill("sleeper", 1, 5.0))
                killed = await session.report("sleeper", "exited")
                # Not the agent's child any more, so the status is not its to know.
                assert (killed.signal, killed.error) == (None, UNKNOWN_STATUS)
                await wait_gone(sleeper.pid)  # type: ignore[arg-type]

    try:
        run(scenario())
    finally:
        os.close(trigger)


@pytest.mark.timeout(30)
def test_an_end_not_yet_forgotten_is_said_again_by_a_restarted_agent(tmp_path: Path) -> None:
    """Its report may never have reached the dispatcher: the next agent says it, as it was,
    until the dispatcher says to forget it."""

    def quick(upid: str) -> Launch:
        return Launch(upid, 1, "/bin/sh", ["-c", "exit 3"], {}, None, "{}")

    async def restarted(hub) -> list:  # type: ignore[no-untyped-def]
        async with running_agent(hub.port, tmp_path, orphans="keep") as agent:
            session = await hub.next_session()
            inventory = list(session.hello.inventory)
            agent.proc.send_signal(signal.SIGTERM)
            assert await agent.wait() == 0
        return inventory

    async def scenario() -> None:
        async with running_hub() as hub:
            async with running_agent(hub.port, tmp_path, orphans="keep") as agent:
                session = await hub.next_session()
                session.send(quick("quick"))
                ended = await session.report("quick", "exited")
                assert ended.exit_code == 3
                agent.proc.send_signal(signal.SIGTERM)  # before any Forget
                assert await agent.wait() == 0

            assert await restarted(hub) == [ended]

            async with running_agent(hub.port, tmp_path, orphans="keep") as agent:
                session = await hub.next_session()
                session.send(Forget("quick", 1), quick("after"))
                await session.report("after", "exited")  # so the Forget was obeyed
                agent.proc.send_signal(signal.SIGTERM)
                assert await agent.wait() == 0

            assert [r.upid for r in await restarted(hub)] == ["after"]

    run(scenario())


@pytest.mark.timeout(30)
def test_kill_orphans_kills_the_groups_a_killed_agent_left(tmp_path: Path) -> None:
    fifo = make_fifo(tmp_path / "gc")
    script = 'sleep 100 & echo $! > "$1"; wait'
    pids: list[int] = []

    async def scenario() -> None:
        async with (
            running_hub() as hub,
            running_agent(hub.port, tmp_path, orphans="keep") as agent,
        ):
            session = await hub.next_session()
            session.send(
                Launch(
                    "group",
                    1,
                    "/bin/sh",
                    ["-c", script, "sh", str(tmp_path / "gc")],
                    {},
                    None,
                    "{}",
                )
            )
            leader = await session.report("group", "running")
            pids.extend([leader.pid, int(await read_fifo(fifo))])  # type: ignore[list-item]
            agent.proc.kill()
            await agent.wait()

    run(scenario())
    assert all(is_alive(pid) for pid in pids)
    assert kill_orphans(tmp_path / "state") == 1

    async def gone() -> None:
        for pid in pids:
            await wait_gone(pid)

    run(gone())
    assert list((tmp_path / "state/pids").iterdir()) == []
    assert kill_orphans(tmp_path / "state") == 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize("identified_by", ["start_time", "pidfd_ino"])
def test_kill_orphans_never_kills_a_reused_pid_nor_under_a_live_agent(
    tmp_path: Path, identified_by: str
) -> None:
    if identified_by == "pidfd_ino" and not has_pidfs():
        pytest.skip("this kernel has no pidfs")
    state = tmp_path / "state"
    (state / "pids").mkdir(parents=True)
    stranger = subprocess.Popen(["sleep", "100"], start_new_session=True)
    try:
        identity = proc_identity(stranger.pid)
        assert identity is not None
        pidfd = os.pidfd_open(stranger.pid)
        ino = os.fstat(pidfd).st_ino
        os.close(pidfd)
        # A record for this pid, but from an older process: another start time or inode.
        record = {
            "upid": "old",
            "round": 1,
            "pgid": stranger.pid,
            "start_time": identity[2] - 1 if identified_by == "start_time" else 0,
            "started_at": 0.0,
            "pidfd_ino": ino - 1 if identified_by == "pidfd_ino" else 0,
        }
        (state / "pids" / str(stranger.pid)).write_text(json.dumps(record))
        (state / "pids" / "12345").write_text("not json")

        lock = lock_state_dir(state)  # what a live agent holds
        with pytest.raises(StateDirBusy):
            kill_orphans(state)
        os.close(lock)

        assert kill_orphans(state) == 0
        assert stranger.poll() is None
        assert list((state / "pids").iterdir()) == []
    finally:
        stranger.kill()
        stranger.wait()
