"""Processes run as the configured user, and never as root unless configured.

Who the agent's processes run as is decided from its ``--run-as`` and ``--allow-root``
(``corral.agent.identity.resolve``, checked here for each kind of agent), and a real agent
is shown to start a real process as ``nobody``, and to refuse to start one as root.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest
from test_agent_harness import run, running_agent, running_hub
from test_agent_processes import sh

from corral.agent.identity import Refuse, RunAs, resolve
from corral.config import default_config, parse_config, refusing_root
from corral.drivers.base import NodeSpec, agent_command
from corral.testing.factories import engine
from corral.wire.messages import LogChunk, ReadLog

NOBODY = pwd.getpwnam("nobody")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root may switch users")


def test_an_agent_that_is_not_root_runs_processes_as_its_own_user() -> None:
    assert resolve(None, False, euid=1000) is None
    assert resolve(None, True, euid=1000) is None


def test_a_root_agent_told_nothing_refuses_to_run_processes() -> None:
    refused = resolve(None, False, euid=0)
    assert isinstance(refused, Refuse)
    assert "refusing to run processes as root" in refused.reason
    assert "run_as" in refused.reason
    assert "allow_root" in refused.reason


def test_a_root_agent_runs_them_as_root_when_allowed_or_told_so() -> None:
    assert resolve(None, True, euid=0) is None
    assert resolve("root", False, euid=0) is None


def test_a_root_agent_runs_them_as_the_configured_user_by_name_or_uid() -> None:
    for name in ("nobody", str(NOBODY.pw_uid)):
        user = resolve(name, False, euid=0)
        assert isinstance(user, RunAs), name
        assert (user.name, user.uid, user.gid) == ("nobody", NOBODY.pw_uid, NOBODY.pw_gid)
        assert user.environ({"HOME": "/root", "PATH": "/bin"}) == {
            "HOME": NOBODY.pw_dir,
            "USER": "nobody",
            "LOGNAME": "nobody",
            "PATH": "/bin",
        }


def test_an_unknown_user_or_a_switch_without_root_is_refused_saying_why() -> None:
    unknown = resolve("no-such-user-here", False, euid=0)
    assert isinstance(unknown, Refuse)
    assert "no such user" in unknown.reason
    not_root = resolve("nobody", False, euid=1000)
    assert isinstance(not_root, Refuse)
    assert "only root may switch users" in not_root.reason
    assert resolve("nobody", False, euid=NOBODY.pw_uid) is None  # already that user


def test_the_engine_tells_every_driver_s_agent_who_to_run_processes_as() -> None:
    argv = agent_command("python3", NodeSpec("n", engine("e", run_as="nobody")), "h:1", "t", "s")
    assert argv[-2:] == ["--run-as", "nobody"]
    argv = agent_command("python3", NodeSpec("n", engine("e", allow_root=True)), "h:1", "t", "s")
    assert argv[-1] == "--allow-root"
    assert "--run-as" not in agent_command("python3", NodeSpec("n", engine("e")), "h:1", "t", "s")


def test_a_root_dispatcher_refuses_a_local_engine_that_says_nothing_and_its_default_says() -> None:
    said_nothing = parse_config({"engines": [{"id": "a"}, {"id": "f", "driver": "fake"}]})
    allowed = parse_config({"engines": [{"id": "a", "allow_root": True}]})
    told = parse_config({"engines": [{"id": "a", "run_as": "nobody"}]})
    root = os.geteuid() == 0
    assert refusing_root(said_nothing) == (["a"] if root else [])
    assert refusing_root(allowed) == refusing_root(told) == []
    # the embedded default keeps working as root: its processes run as nobody
    assert default_config().default_engine.run_as == ("nobody" if root else None)
    assert refusing_root(default_config()) == []


def uids(pid: int) -> list[int]:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    return [int(uid) for uid in line.split()[1:]]


def read_stdout(session, upid: str):
    async def read() -> str:
        session.send(ReadLog(1, upid, "stdout", 0, 10_000))
        chunk = await session.expect(LogChunk)
        return chunk.data.decode()

    return read()


@as_root
@pytest.mark.timeout(30)
def test_a_process_runs_as_the_configured_user(tmp_path: Path) -> None:
    script = (
        'id -u; id -g; id -G; echo "$HOME $USER"; cat "$CORRAL_CONFIGURATION_FILE"; echo;'
        ' stat -c "%U %a" "$CORRAL_CONFIGURATION_FILE"'
    )
    output = ""

    async def scenario() -> None:
        nonlocal output
        async with (
            running_hub() as hub,
            running_agent(hub.port, tmp_path, args=("--run-as", "nobody")),
        ):
            session = await hub.next_session()
            session.send(sh("as-nobody", script, configuration='{"k": 1}'))
            running = await session.report("as-nobody", "running")
            exited = await session.report("as-nobody", "exited")
            assert exited.exit_code == 0, exited
            output = await read_stdout(session, "as-nobody")
            # the real process, seen by the kernel: its uid was nobody's while it ran
            assert running.pid is not None

    run(scenario())
    lines = output.splitlines()
    assert lines[0] == str(NOBODY.pw_uid)
    assert lines[1] == str(NOBODY.pw_gid)
    assert "0" not in lines[2].split()  # not in root's group either
    assert lines[3] == f"{NOBODY.pw_dir} nobody"
    assert lines[4] == '{"k": 1}'  # its configuration file is readable by it
    assert lines[5] == "nobody 600"


@as_root
@pytest.mark.timeout(30)
def test_a_process_that_runs_as_another_user_can_be_killed_and_its_exit_is_known(
    tmp_path: Path,
) -> None:
    from corral.wire.messages import Kill

    async def scenario() -> None:
        async with (
            running_hub() as hub,
            running_agent(hub.port, tmp_path, args=("--run-as", "nobody")),
        ):
            session = await hub.next_session()
            session.send(sh("sleeper", "exec sleep 60"))
            running = await session.report("sleeper", "running")
            assert running.pid is not None
            # real, effective, saved and file-system uids, as the kernel sees them
            assert uids(running.pid) == [NOBODY.pw_uid] * 4
            session.send(Kill("sleeper", 1, 5.0))
            exited = await session.report("sleeper", "exited")
            assert exited.signal == 15

    run(scenario())


@as_root
@pytest.mark.timeout(30)
def test_a_root_agent_told_nothing_starts_nothing_and_says_why(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    async def scenario() -> None:
        async with running_hub() as hub, running_agent(hub.port, tmp_path, args=()):
            session = await hub.next_session()
            session.send(sh("as-root", f"touch {marker}"))
            failed = await session.report("as-root", "spawn_failed")
            assert failed.error is not None
            assert "refusing to run processes as root" in failed.error

    run(scenario())
    assert not marker.exists()


@as_root
@pytest.mark.timeout(30)
def test_an_exec_that_cannot_start_as_the_user_is_a_spawn_failure(tmp_path: Path) -> None:
    from corral.wire.messages import Launch

    async def scenario() -> None:
        async with (
            running_hub() as hub,
            running_agent(hub.port, tmp_path, args=("--run-as", "nobody")),
        ):
            session = await hub.next_session()
            session.send(Launch("missing", 1, "/no/such/program", [], {}, None, "{}"))
            failed = await session.report("missing", "spawn_failed")
            assert failed.error == "No such file or directory: /no/such/program"

    run(scenario())
