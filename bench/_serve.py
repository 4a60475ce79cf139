"""Start and stop a real ``corral serve`` for the benchmarks (a helper, not a benchmark)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from corral.testing.dispatcher import destroy_local_nodes


class Served:
    """A ``corral serve`` subprocess on a fresh home and a free port."""

    def __init__(
        self,
        config: str | None = None,
        store_url: str | None = None,
        prepare: Callable[[str], None] | None = None,
        home_base: str | None = None,
    ) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="corral-bench-", dir=home_base))
        if config is not None:
            (self.home / "corral.toml").write_text(config)
        if prepare is not None:
            prepare(str(self.home))
        argv = [
            sys.executable,
            "-m",
            "corral",
            "serve",
            "--home",
            str(self.home),
            "--listen",
            "127.0.0.1:0",
            "--log-level",
            "warning",
        ]
        if store_url:
            argv += ["--store", store_url]
        self.argv = argv
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        url_file = self.home / "url"
        url_file.unlink(missing_ok=True)
        started = time.monotonic()
        proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not url_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("corral serve did not start")
            time.sleep(0.02)
        self.started_in = time.monotonic() - started
        self.url = url_file.read_text().strip()
        self.token = (self.home / "token").read_text().strip()
        return proc

    @classmethod
    def prepared(cls, prepare: Callable[[str], None]) -> Served:
        """A dispatcher on a home that ``prepare`` filled before it starts."""
        return cls(prepare=prepare)

    def wait_nodes(self, count: int = 1, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        headers = {"Authorization": f"Bearer {self.token}"}
        while time.monotonic() < deadline:
            nodes = httpx.get(f"{self.url}/nodes", headers=headers).json()
            if sum(1 for n in nodes if n.get("connected")) >= count:
                return
            time.sleep(0.05)
        raise RuntimeError("no node joined")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        cleaner = threading.Thread(target=destroy_local_nodes, args=(self.home,))
        cleaner.start()
        cleaner.join()
        shutil.rmtree(self.home, ignore_errors=True)


def cores() -> int:
    return os.cpu_count() or 1
