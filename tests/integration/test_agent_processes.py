"""The agent runs real processes: exit codes, logs, configuration, kills and spawn failures."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
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

from corral.testing.serve import wait_until
from corral.wire.messages import Kill, Launch, LogChunk, ReadLog, Shutdown


def sh(
    upid: str,
    script: str,
    *args: str,
    round_: int = 1,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    configuration: str = "{}",
) -> Launch:
    """A Launch of ``/bin/sh -c script sh args...``."""
    argv = ["-c", script, "sh", *args]
    return Launch(upid, round_, "/bin/sh", argv, env or {}, cwd, configuration)


@pytest.mark.timeout(30)
def test_a_process_reports_running_then_its_exit_code_and_its_logs_are_readable(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with running_hub() as hub, running_agent(hub.port, tmp_path):
            session = await hub.next_session()
            session.send(sh("p1", "echo out; echo err >&2; exit 3"))
            running = await session.report("p1", "running")
            assert running.pid is not None
            assert running.started_at is not None
            exited = await session.report("p1", "exited")
            assert (exited.exit_code, exited.signal, exited.error) == (3, None, None)
            assert exited.pid == running.pid
            assert exited.ended_at is not None
            assert exited.ended_at >= running.started_at

            session.send(
                ReadLog(1, "p1", "stdout", 0, 1000),
                ReadLog(2, "p1", "stderr", 0, 1000),
                ReadLog(3, "p1", "stdout", 1, 2),
                ReadLog(4, "p1", "stdout", 9, 10),
                ReadLog(5, "nobody", "stdout", 0, 10),
            )
            chunks = {}
            for _ in range(5):
                chunk = await session.expect(LogChunk)
                chunks[chunk.request_id] = chunk
            assert chunks[1] == LogChunk(1, b"out\n", 4, 4, None)
            assert chunks[2] == LogChunk(2, b"err\n", 4, 4, None)
            assert chunks[3] == LogChunk(3, b"ut", 3, 4, None)
            assert chunks[4] == LogChunk(4, b"", 9, 4, None)
            assert chunks[5] == LogChunk(5, b"", 0, 0, None)

    run(scenario())


@pytest.mark.timeout(30)
def test_configuration_env_and_working_directory_reach_the_process(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    configuration = json.dumps({"name": "x y", "n": [1, 2]})
    script = (
        'printf %s "$CORRAL_CONFIGURATION" > conf.env; '
        'cat "$CORRAL_CONFIGURATION_FILE" > conf.file; '
        'stat -c %a "$CORRAL_CONFIGURATION_FILE" > conf.mode; '
        'printf "%s %s %s" "$CORRAL_UPID" "$CORRAL_ROUND" "$FOO" > ids; '
        'printf %s "${CORRAL_AGENT_TOKEN-unset}" > token; '
        'echo "$CORRAL_CONFIGURATION_FILE" > conf.path; pwd > cwd'
    )
    launch = sh(
        "web/1", script, round_=7, env={"FOO": "bar"}, cwd=str(work), configuration=configuration
    )

    async def scenario() -> None:
        async with running_hub() as hub, running_agent(hub.port, tmp_path):
            session = await hub.next_session()
            session.send(launch)
            exited = await session.report("web/1", "exited", round_=7)
            assert exited.exit_code == 0, exited

    run(scenario())
    assert (work / "conf.env").read_text() == configuration
    assert (work / "conf.file").read_text() == configuration
    assert (work / "conf.mode").read_text().strip() == "600"
    assert (work / "ids").read_text() == "web/1 7 bar"
    assert (work / "token").read_text() == "unset"  # the agent's credentials do not leak
    assert (work / "cwd").read_text().strip() == str(work)
    config_file = Path((work / "conf.path").read_text().strip())
    assert config_file.parent == tmp_path / "state" / "config"
    assert not config_file.exists()  # removed once the round is over


@pytest.mark.timeout(30)
def test_a_repeated_launch_starts_nothing_and_repeats_the_report(tmp_path: Path) -> None:
    count = tmp_path / "count"
    ready = make_fifo(tmp_path / "ready")
    script = 'echo $$ >> "$1"; echo >> "$2"; exec sleep 100'
    launch = sh("dup", script, str(count), str(tmp_path / "ready"))
    pid = None

    async def scenario() -> None:
        async with running_hub() as hub, running_agent(hub.port, tmp_path):
            session = await hub.next_session()
            session.send(launch, launch)  # twice in one batch
            first = await session.report("dup", "running")
            again = await session.report("dup", "running")
            session.send(launch)  # and once more, later
            third = await session.report("dup", "running")
            assert first == again == third
            nonlocal pid
            pid = first.pid
            await read_fifo(ready)  # the first (and only) spawn has counted itself
            session.send(Kill("dup", 1, 5.0))
            exited = await session.report("dup", "exited")
            assert exited.signal == signal.SIGTERM
            session.send(launch)  # a Launch of a finished round repeats its end
            assert await session.report("dup", "exited") == exited

    run(scenario())
    assert count.read_text() == f"{pid}\n"


def test_a_bare_program_name_is_found_on_the_process_s_own_path(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "tool"
    tool.write_text('#!/bin/sh\necho "$0 ran with $1"\n')
    tool.chmod(0o755)

    async def scenario() -> None:
        async with running_hub() as hub, running_agent(hub.port, tmp_path):
            session = await hub.next_session()
            session.send(
                Launch("found", 1, "tool", ["x"], {"PATH": str(bin_dir)}, None, "{}"),
                Launch("system", 1, "true", [], {}, None, "{}"),  # the agent's own PATH
                Launch("lost", 1, "tool", [], {"PATH": "/nowhere"}, None, "{}"),
            )
            assert (await session.report("found", "exited")).exit_code == 0
            assert (await session.report("system", "exited")).exit_code == 0
            lost = await session.report("lost", "spawn_failed")
            assert lost.error == "No such file or directory on PATH /nowhere: tool"

    run(scenario())
    assert (tmp_path / "state/logs/found.stdout").read_text() == f"{tool} ran with x\n"


@pytest.mark.timeout(30)
def test_two_rounds_of_one_process_run_side_by_side(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub() as hub, running_agent(hub.port, tmp_path):
            session = await hub.next_session()
            session.send(*(sh("svc", "exec sleep 100", round_=n) for n in (1, 2)))
            first = await session.report("svc", "running", round_=1)
            second = await session.report("svc", "running", round_=2)
            assert first.pid != second.pid
            session.send(Kill("svc", 1, 5.0))
            assert (await session.report("svc", "exited", round_=1)).signal == signal.SIGTERM
            session.send(Kill("svc", 2, 5.0))
            assert (await session.report("svc", "exited", round_=2)).signal == signal.SIGTERM

    run(scenario())


@pytest.mark.timeout(30)
def test_kill_terminates_the_whole_process_group(tmp_path: Path) -> None:
    fifo = make_fifo(tmp_path / "gc")

    async def scenario() -> None:
        async with running_hub() as hub, running_agent(hub.port, tmp_path):
            session = await hub.next_session()
            session.send(sh("sleeper", 'sleep 100 & echo $! > "$1"; wait', str(tmp_path / "gc")))
            grandchild = int(await read_fifo(fifo))
            session.send(Kill("sleeper", 1, 10.0))
            exited = await session.report("sleeper", "exited")
            assert exited.signal == signal.SIGTERM
            assert exited.exit_code is None
            await wait_gone(grandchild)
            session.send(Kill("sleeper", 1, 10.0))  # a Kill of a finished round repeats its end
            assert await session.report("sleeper", "exited") == exited

    run(scenario())


@pytest.mark.timeout(30)
def test_a_process_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    # The shell and its sleeping child both ignore SIGTERM (dispositions are inherited).
    script = 'trap "" TERM; sleep 100 & echo $! > "$1"; wait'
    fifo = make_fifo(tmp_path / "gc")

    async def scenario() -> None:
        async with running_hub() as hub, running_agent(hub.port, tmp_path):
            session = await hub.next_session()
            session.send(sh("stubborn", script, str(tmp_path / "gc")))
            grandchild = int(await read_fifo(fifo))
            session.send(Kill("stubborn", 1, 0.3))
            exited = await session.report("stubborn", "exited")
            assert exited.signal == signal.SIGKILL
            await wait_gone(grandchild)

    run(scenario())


@pytest.mark.timeout(30)
def test_the_group_is_killed_when_its_leader_exits(tmp_path: Path) -> None:
    fifo = make_fifo(tmp_path / "gc")

    async def scenario() -> None:
        async with running_hub() as hub, running_agent(hub.port, tmp_path):
            session = await hub.next_session()
            session.send(sh("leaver", 'sleep 100 & echo $! > "$1"', str(tmp_path / "gc")))
            grandchild = int(await read_fifo(fifo))
            exited = await session.report("leaver", "exited")
            assert exited.exit_code == 0
            await wait_gone(grandchild)

    run(scenario())


@pytest.mark.timeout(30)
def test_spawn_failures_are_reported_and_the_agent_carries_on(tmp_path: Path) -> None:
    not_executable = tmp_path / "script.sh"
    not_executable.write_text("#!/bin/sh\n")
    missing_dir = tmp_path / "no-such-dir"

    async def scenario() -> None:
        async with running_hub() as hub, running_agent(hub.port, tmp_path):
            session = await hub.next_session()
            session.send(
                Launch("a", 1, "/nonexistent/prog", [], {}, None, "{}"),
                Launch("b", 1, str(not_executable), [], {}, None, "{}"),
                Launch("c", 1, "/bin/true", [], {}, str(missing_dir), "{}"),
                Launch("../../etc/passwd", 1, "/bin/echo", ["hi"], {}, None, "{}"),
                Launch("x" * 300, 1, "/bin/true", [], {}, None, "{}"),
                Launch("d", 1, "/bin/true", [], {"BAD": "nul\x00"}, None, "{}"),
                sh("ok", "exit 0"),
            )
            a = await session.report("a", "spawn_failed")
            assert a.error == "No such file or directory: /nonexistent/prog"
            assert a.pid is None
            assert a.ended_at is not None
            b = await session.report("b", "spawn_failed")
            assert b.error == f"Permission denied: {not_executable}"
            c = await session.report("c", "spawn_failed")
            assert c.error == f"No such file or directory: {missing_dir}"
            # An odd upid is escaped into a file name, so it runs and logs inside the state dir.
            await session.report("../../etc/passwd", "exited")
            # A long upid gets a shortened, digest-suffixed file name: it still runs.
            assert (await session.report("x" * 300, "exited")).exit_code == 0
            d = await session.report("d", "spawn_failed")
            assert "null" in (d.error or "")
            assert (await session.report("ok", "exited")).exit_code == 0

    run(scenario())
    assert (tmp_path / "state/logs/%2E.%2F..%2Fetc%2Fpasswd.stdout").read_text() == "hi\n"


@pytest.mark.timeout(30)
def test_shutdown_terminates_everything_and_exits_0(tmp_path: Path) -> None:
    fifo = make_fifo(tmp_path / "ready")
    pids = []

    async def scenario() -> None:
        async with running_hub() as hub, running_agent(hub.port, tmp_path) as agent:
            session = await hub.next_session()
            session.send(
                Launch("polite", 1, "/bin/sleep", ["100"], {}, None, "{}"),
                sh("stubborn", 'trap "" TERM; echo > "$1"; sleep 100', str(tmp_path / "ready")),
            )
            pids.append((await session.report("polite", "running")).pid)
            pids.append((await session.report("stubborn", "running")).pid)
            await read_fifo(fifo)
            session.send(Shutdown(0.3))
            assert (await session.report("polite", "exited")).signal == signal.SIGTERM
            assert (await session.report("stubborn", "exited")).signal == signal.SIGKILL
            assert await agent.wait() == 0

    run(scenario())
    assert not any(is_alive(pid) for pid in pids if pid is not None)
    assert list((tmp_path / "state/pids").iterdir()) == []


@pytest.mark.timeout(30)
@pytest.mark.parametrize("retention", ["3600", "0"])
def test_an_agent_removes_the_logs_past_their_retention(tmp_path: Path, retention: str) -> None:
    """Of processes it no longer runs: those unwritten for ``--log-retention`` seconds go
    (looked for at start, then every few minutes); 0 keeps them all."""
    logs = tmp_path / "state" / "logs"
    logs.mkdir(parents=True)
    old, fresh = logs / "done-long-ago.stdout", logs / "done-lately.stdout"
    old.write_text("old\n")
    fresh.write_text("fresh\n")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))

    async def scenario() -> None:
        args = ("--allow-root", "--log-retention", retention)
        async with running_hub() as hub, running_agent(hub.port, tmp_path, args=args) as agent:
            session = await hub.next_session()
            session.send(sh("p1", "echo done"))  # the agent is up and has looked by now
            await session.report("p1", "exited")
            if retention != "0":
                await asyncio.to_thread(wait_until, lambda: not old.exists(), "old log gone", 10)
                assert "removed 1 log files unwritten for 3600s" in agent.log()

    run(scenario())
    assert fresh.read_text() == "fresh\n"
    assert old.exists() == (retention == "0")
