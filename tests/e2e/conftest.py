"""End to end: a real ``corral serve`` subprocess, driven as a user drives it.

``served`` (one per test module) runs ``corral serve --home H --listen 127.0.0.1:0`` with one
local node; ``cli`` runs ``python -m corral ...`` against it with only ``CORRAL_HOME`` set, so
the CLI finds the URL and the token by itself, as it does for a user. Teardown stops the
dispatcher and destroys every local agent and what it runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from corral.testing.dispatcher import destroy_local_nodes

T = TypeVar("T")

CONFIG = """
[[engines]]
id = "default"
driver = "local"
slots = 4
base_need = 1
maximum_vms = 1
heartbeat_period = 0.2
heartbeat_warning = 1.0
heartbeat_missing = 2.0
terminate_grace = 1.0
"""
DEADLINE = 20.0


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process; a zombie is not (PID 1 here may never reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def wait_until(
    probe: Callable[[], T], what: str, timeout: float = DEADLINE, every: float = 0.05
) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what} (last: {value!r})")
        time.sleep(every)


def user_env(home: Path) -> dict[str, str]:
    """The environment of a user whose corral lives in ``home`` (nothing else set)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env["CORRAL_HOME"] = str(home)
    env.pop("COLUMNS", None)
    return env


@dataclass
class Served:
    home: Path
    proc: subprocess.Popen[bytes]
    url: str
    token: str

    wait_until = staticmethod(wait_until)
    pid_alive = staticmethod(pid_alive)

    def http(self, token: str | None = "") -> httpx.Client:
        """An httpx client of the API; ``token=None`` sends no Authorization header."""
        headers = {} if token is None else {"Authorization": f"Bearer {token or self.token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10.0)

    def log_tail(self, lines: int = 40) -> str:
        text = (self.home / "serve.log").read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def start_served(home: Path, config: str = CONFIG) -> Served:
    home.mkdir(parents=True, exist_ok=True)
    (home / "corral.toml").write_text(config)
    argv = [sys.executable, "-m", "corral", "serve", "--home", str(home)]
    argv += ["--listen", "127.0.0.1:0", "--log-level", "info"]
    with (home / "serve.log").open("wb") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    url_file = home / "url"
    wait_until(lambda: url_file.exists() or proc.poll() is not None, "corral serve to start")
    if proc.poll() is not None:
        raise RuntimeError(f"corral serve exited with {proc.returncode}")
    served = Served(home, proc, url_file.read_text().strip(), (home / "token").read_text().strip())
    with served.http() as http:
        wait_until(
            lambda: any(n["connected"] and n["health"] == "ok" for n in http.get("/nodes").json()),
            "a node to join",
        )
    return served


def stop_served(served: Served) -> None:
    if served.proc.poll() is None:
        served.proc.send_signal(signal.SIGTERM)
        try:
            served.proc.wait(10)
        except subprocess.TimeoutExpired:
            served.proc.kill()
            served.proc.wait(10)
    destroy_local_nodes(served.home)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A ``corral serve`` with its node up, shared by the tests of one module."""
    server = start_served(tmp_path_factory.mktemp("e2e") / "home")
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            stop_served(server)


@dataclass
class Run:
    """One CLI run: its exit code and its output."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


Cli = Callable[..., Run]


@pytest.fixture
def cli(served: Served) -> Cli:
    """``cli("process list --json")`` runs the corral CLI as the user would.

    The command line is split as a POSIX shell splits it (``shlex``).
    """

    def run(command: str, timeout: float = 30.0) -> Run:
        done = subprocess.run(
            [sys.executable, "-m", "corral", *shlex.split(command)],
            env=user_env(served.home),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return Run(done.returncode, done.stdout, done.stderr)

    return run
