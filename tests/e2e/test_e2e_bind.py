"""``corral serve`` listens on loopback unless told otherwise, loudly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import CONFIG, Served, serve_once


@pytest.mark.parametrize(
    "args",
    [
        ["--listen", "0.0.0.0:0"],
        ["--listen", "127.0.0.1:0", "--queue", "[::]:0"],
        ["--listen", "127.0.0.1:0", "--agent-listen", "0.0.0.0:0"],
        ["--listen", "127.0.0.1:0", "--agent-listen", "[::]:0"],
    ],
    ids=["api", "queue", "agents", "agents-ipv6"],
)
def test_binding_beyond_loopback_is_refused_without_the_flag(
    tmp_path: Path, args: list[str]
) -> None:
    done = serve_once(tmp_path, *args)
    assert done.returncode == 2
    assert "refusing to listen beyond loopback" in done.stderr
    assert "--allow-remote" in done.stderr
    assert not (tmp_path / "url").exists()
    assert not (tmp_path / "agent_address").exists()


def test_an_agent_port_left_beyond_loopback_by_the_last_run_is_refused_too(
    tmp_path: Path,
) -> None:
    # the runtime reopens the agent port where agents last found it: no flag, no reopening
    (tmp_path / "agent_address").write_text("0.0.0.0:7999\n")
    done = serve_once(tmp_path, "--listen", "127.0.0.1:0")
    assert done.returncode == 2
    assert "refusing to listen beyond loopback" in done.stderr
    assert "agent_address" in done.stderr
    assert not (tmp_path / "url").exists()


def test_the_flag_lets_the_api_listen_on_every_interface(tmp_path: Path) -> None:
    served = Served(tmp_path / "home", CONFIG)
    served.argv = [
        *(a if a != "127.0.0.1:0" else "0.0.0.0:0" for a in served.argv),
        "--allow-remote",
    ]
    served.start()
    try:
        assert served.url.startswith("http://")
        with served.http() as client:
            assert client.get("/health").status_code == 200
    finally:
        served.stop()


def test_the_flag_lets_agents_dial_from_beyond_loopback(tmp_path: Path) -> None:
    served = Served(tmp_path / "home", CONFIG)
    served.argv = [*served.argv, "--agent-listen", "0.0.0.0:0", "--allow-remote"]
    served.start()
    try:
        served.wait_nodes()
        assert (served.home / "agent_address").read_text().startswith("0.0.0.0:")
    finally:
        served.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="the refusal is for a dispatcher running as root")
def test_as_root_a_local_engine_must_say_who_its_processes_run_as(tmp_path: Path) -> None:
    (tmp_path / "corral.toml").write_text('[[engines]]\nid = "plain"\n')
    done = serve_once(tmp_path, "--listen", "127.0.0.1:0")
    assert done.returncode == 2
    assert "engine 'plain'" in done.stderr
    assert "run_as" in done.stderr
    assert "allow_root" in done.stderr
    assert not (tmp_path / "url").exists()
