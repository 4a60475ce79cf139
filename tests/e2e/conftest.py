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
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from corral.testing.serve import ServeProcess, pid_alive, wait_until

T = TypeVar("T")

CONFIG = """
[[engines]]
id = "default"
allow_root = true  # the tests may run as root
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


def user_env(home: Path) -> dict[str, str]:
    """The environment of a user whose corral lives in ``home`` (nothing else set)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env["CORRAL_HOME"] = str(home)
    env.pop("COLUMNS", None)
    return env


class Served(ServeProcess):
    """``corral serve`` with its node up; the helpers are reachable from it too."""

    wait_until = staticmethod(wait_until)
    pid_alive = staticmethod(pid_alive)


def start_served(home: Path, config: str = CONFIG) -> Served:
    served = Served(home, config)
    served.start()
    served.wait_nodes()
    return served


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A ``corral serve`` with its node up, shared by the tests of one module."""
    server = start_served(tmp_path_factory.mktemp("e2e") / "home")
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()


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
