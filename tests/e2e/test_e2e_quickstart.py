"""``scripts/quickstart``, the README's first command, on a fresh ``CORRAL_HOME``.

The script starts a dispatcher on the default address (127.0.0.1:7480), so the test is
skipped when that port is taken. Afterwards the dispatcher it left running (its pid is in
``$CORRAL_HOME/serve.pid``) is stopped and its nodes destroyed.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corral.testing.dispatcher import destroy_local_nodes

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "scripts" / "quickstart"
DEFAULT_PORT = 7480

pytestmark = pytest.mark.timeout(60)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _stop(home: Path) -> None:
    pid_file = home / "serve.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    destroy_local_nodes(home)


def test_quickstart_runs_a_first_process(tmp_path: Path) -> None:
    if not _port_free(DEFAULT_PORT):
        pytest.skip(f"port {DEFAULT_PORT}, which scripts/quickstart uses, is busy")
    home = tmp_path / "corral-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env["CORRAL_HOME"] = str(home)
    try:
        done = subprocess.run(
            [str(QUICKSTART)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=50,
            check=False,
        )
        output = f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        assert done.returncode == 0, output
        assert "hello from corral" in done.stdout, output
        assert "800-EXITED" in done.stdout, output
        assert (home / "serve.pid").exists(), output
        assert (home / "url").read_text().strip() == f"http://127.0.0.1:{DEFAULT_PORT}"
        # on embedded defaults, processes run as the user who started corral, but never
        # as root: a root dispatcher runs them as nobody
        corral = [sys.executable, "-m", "corral", "process"]
        whoami = [*corral, "schedule", "whoami", "--exec", "/usr/bin/id", "--arg", "-un"]
        subprocess.run([*whoami, "--wait", "800-EXITED"], env=env, check=True, timeout=30)
        logs = subprocess.run(
            [*corral, "logs", "whoami"], env=env, capture_output=True, text=True, check=True
        )
        expected = "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.getuid()).pw_name
        assert logs.stdout.strip() == expected
    finally:
        _stop(home)
    assert not _alive(int((home / "serve.pid").read_text()))
