"""The ``corral`` command itself: help, version, errors, and the lazily found commands."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import click
import httpx
import pytest
from click.testing import CliRunner

import corral
from corral.cli import cli, main
from corral.cli._context import Settings
from corral.client import Client


def invoke(*args: str, settings: Settings | None = None) -> click.testing.Result:
    return CliRunner().invoke(cli, list(args), obj=settings or Settings())


def refusing(url: str | None, token: str | None, ca: str | None = None) -> Client:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    return Client(url, "t", transport=httpx.MockTransport(handler))


def test_help_lists_every_command_group() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for name in ("agent", "definition", "engine", "node", "process", "serve"):
        assert f"  {name}" in result.stdout


def test_version() -> None:
    assert invoke("--version").stdout == f"corral, version {corral.__version__}\n"


def test_an_unreachable_dispatcher_is_one_line_naming_the_url() -> None:
    settings = Settings(client_factory=refusing)
    result = invoke("--url", "http://127.0.0.1:9", "process", "list", settings=settings)
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "error: cannot reach the corral dispatcher at http://127.0.0.1:9"
    )
    assert "corral serve" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_global_options_reach_the_client_factory() -> None:
    seen: list[tuple[str | None, str | None, str | None]] = []

    def factory(url: str | None, token: str | None, ca: str | None) -> Client:
        seen.append((url, token, ca))
        return refusing(url, token)

    invoke(
        "--url",
        "http://u:1",
        "--token",
        "tok",
        "--ca",
        "ca.pem",
        "node",
        "list",
        settings=Settings(client_factory=factory),
    )
    assert seen == [("http://u:1", "tok", "ca.pem")]


def test_an_unexpected_exception_is_one_line_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(url: str | None, token: str | None, ca: str | None) -> Client:
        raise RuntimeError("kaput")

    monkeypatch.delenv("CORRAL_DEBUG", raising=False)
    result = invoke("node", "list", settings=Settings(client_factory=broken))
    assert result.exit_code == 1
    assert result.stderr == (
        "error: unexpected RuntimeError: kaput (set CORRAL_DEBUG=1 to see the traceback)\n"
    )


def test_corral_debug_lets_the_exception_through(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(url: str | None, token: str | None, ca: str | None) -> Client:
        raise RuntimeError("kaput")

    monkeypatch.setenv("CORRAL_DEBUG", "1")
    result = invoke("node", "list", settings=Settings(client_factory=broken))
    assert isinstance(result.exception, RuntimeError)


def test_agent_gets_its_arguments_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[list[str]] = []

    def agent_main(argv: list[str]) -> int:
        received.append(argv)
        return 3

    module = types.ModuleType("corral.agent.main")
    module.main = agent_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "corral.agent.main", module)
    result = invoke("agent", "--dispatcher", "h:1", "--help", "-x")
    assert received == [["--dispatcher", "h:1", "--help", "-x"]]
    assert result.exit_code == 3


def test_a_missing_agent_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "corral.agent.main", None)
    result = invoke("agent")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: corral agent is not available")


def test_serve_is_found_when_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    @click.command()
    @click.option("--listen")
    def serve(listen: str) -> None:
        click.echo(f"serving on {listen}")

    module = types.ModuleType("corral.cli.serve")
    module.serve = serve  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "corral.cli.serve", module)
    monkeypatch.setattr(cli, "commands", {k: v for k, v in cli.commands.items() if k != "serve"})
    assert invoke("serve", "--listen", "127.0.0.1:0").stdout == "serving on 127.0.0.1:0\n"


def test_a_missing_serve_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "corral.cli.serve", None)
    monkeypatch.setattr(cli, "commands", {k: v for k, v in cli.commands.items() if k != "serve"})
    result = invoke("serve", "--listen", "x")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: corral serve is not available")


def test_main_is_the_console_script(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert corral.__version__ in capsys.readouterr().out


def test_python_dash_m_corral_runs_the_cli() -> None:
    source = str(Path(corral.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": source}
    done = subprocess.run(
        [sys.executable, "-m", "corral", "--version"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (0, f"corral, version {corral.__version__}\n")
