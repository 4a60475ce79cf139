"""A real PostgreSQL server for the tests, from the machine's own binaries, on loopback.

``initdb`` and ``postgres`` refuse to run as root, so as root they run as the ``postgres``
user the Debian package creates, in a directory it owns. ``PostgresServer.database()`` makes
a fresh database per test and returns its URL.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any


def binaries() -> Path | None:
    """The newest installed PostgreSQL server binaries, if any."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    def __init__(self) -> None:
        bin_dir = binaries()
        if bin_dir is None:
            raise RuntimeError("no PostgreSQL server installed (Debian package postgresql)")
        self._bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="corral-pg-"))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self._user: dict[str, Any] = {}
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            self._user = {"user": "postgres", "group": "postgres", "extra_groups": []}
        self._counter = itertools.count(1)

    def _run(self, *argv: str) -> None:
        subprocess.run(
            argv, check=True, capture_output=True, cwd=self.dir, timeout=120, **self._user
        )

    def start(self) -> None:
        data = self.dir / "data"
        self._run(
            str(self._bin / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        self._pg_ctl_start()

    def _pg_ctl_start(self) -> None:
        data = self.dir / "data"
        options = f"-h 127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off"
        self._run(
            str(self._bin / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(self.dir / "log"),
            "-w",
            "-o",
            options,
            "start",
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new, empty database; its URL."""
        import psycopg

        name = f"test_{os.getpid()}_{next(self._counter)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def _pg_ctl_stop(self) -> None:
        self._run(
            str(self._bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop"
        )

    def restart(self, down_for: float = 0.0) -> None:
        """Stop the server (its clients' connections are cut), wait, start it again."""
        self._pg_ctl_stop()
        time.sleep(down_for)
        self._pg_ctl_start()

    def __enter__(self) -> PostgresServer:
        """Start the server; leaving the block stops it and removes its files."""
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        try:
            self._pg_ctl_stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
