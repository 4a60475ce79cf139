"""``corral serve`` as a subprocess, for end-to-end tests, fault tests and benchmarks.

A :class:`ServeProcess` runs the real command on a home of its own and a free loopback
port, can be SIGKILLed and started again on the same home (its agents outlive it, as in
production), and on ``stop`` destroys every local agent and what it runs.
"""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx

from corral.testing.dispatcher import destroy_local_nodes
from corral.tls import CERTIFICATE_FILE, trusting

T = TypeVar("T")


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process; a zombie is not (it only waits to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # the state follows the command name, which is in parentheses and may hold spaces
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def wait_until(probe: Callable[[], T], what: str, timeout: float = 20.0, every: float = 0.02) -> T:
    """Poll ``probe`` until it returns something truthy and return it.

    Raises AssertionError naming ``what`` (and the last value) at the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what} (last: {value!r})"
            )
        time.sleep(every)


class ServeProcess:
    """``corral serve --home HOME --listen 127.0.0.1:0`` as a child process."""

    def __init__(
        self,
        home: Path,
        config: str | None = None,
        *,
        store_url: str | None = None,
        log_level: str = "info",
    ) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        if config is not None:
            (home / "corral.toml").write_text(config)
        self.argv = [sys.executable, "-m", "corral", "serve", "--home", str(home)]
        self.argv += ["--listen", "127.0.0.1:0", "--log-level", log_level]
        if store_url:
            self.argv += ["--store", store_url]
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.url = ""
        self.token = ""
        self.readonly_token = ""
        #: seconds the last start took until the API answered
        self.started_in = 0.0

    def start(self, timeout: float = 30.0) -> None:
        """Start it and wait until it has written its API address."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        url_file = self.home / "url"
        url_file.unlink(missing_ok=True)
        self.runs += 1
        began = time.monotonic()
        with (self.home / f"serve-{self.runs}.log").open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        proc = self.proc
        wait_until(
            lambda: url_file.exists() or proc.poll() is not None,
            "corral serve to write its url",
            timeout,
        )
        if proc.poll() is not None:
            raise AssertionError(f"corral serve exited with {proc.returncode}:\n{self.log_tail()}")
        self.started_in = time.monotonic() - began
        self.url = url_file.read_text().strip()
        self.token = (self.home / "token").read_text().strip()
        self.readonly_token = (self.home / "readonly_token").read_text().strip()

    def http(self, token: str | None = "") -> httpx.Client:
        """An httpx client of the API; ``token=None`` sends no Authorization header. Over
        TLS it trusts the certificate the dispatcher left in its home."""
        headers = {} if token is None else {"Authorization": f"Bearer {token or self.token}"}
        verify: ssl.SSLContext | bool = True
        if self.url.startswith("https:"):
            verify = trusting((self.home / CERTIFICATE_FILE).read_text())
        return httpx.Client(base_url=self.url, headers=headers, timeout=10.0, verify=verify)

    def wait_nodes(self, count: int = 1, timeout: float = 30.0) -> None:
        """Wait until ``count`` nodes are connected and healthy."""
        with self.http() as http:
            wait_until(
                lambda: (
                    sum(
                        1
                        for n in http.get("/nodes").json()
                        if n["connected"] and n["health"] == "ok"
                    )
                    >= count
                ),
                f"{count} node(s) to join",
                timeout,
            )

    def kill(self) -> None:
        """SIGKILL the dispatcher, and only it: its agents run in their own sessions."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        """Stop the dispatcher (SIGTERM, then SIGKILL) and destroy its local nodes."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        destroy_local_nodes(self.home)

    def rss_kib(self) -> int:
        """The dispatcher's resident memory."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for path in sorted(self.home.glob("serve-*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)
