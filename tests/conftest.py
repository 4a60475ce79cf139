"""Settings for the whole suite.

Agents started by the tests keep their runtime files (pid records, configuration files)
under ``$XDG_RUNTIME_DIR``; the suite points it at a directory of its own and removes it at
the end, so no run leaves anything in the machine's shared tmpfs. ``postgres`` is one real
PostgreSQL server for the run (the store suite, the lease and the failover tests).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from corral.testing.postgres import PostgresServer


@pytest.fixture(scope="session", autouse=True)
def private_runtime_dir() -> Iterator[str]:
    runtime = tempfile.mkdtemp(
        prefix="corral-tests-run-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    )
    saved = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = runtime
    try:
        yield runtime
    finally:
        if saved is None:
            del os.environ["XDG_RUNTIME_DIR"]
        else:
            os.environ["XDG_RUNTIME_DIR"] = saved
        shutil.rmtree(runtime, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole run, on loopback (Debian's ``postgresql``)."""
    with PostgresServer() as server:
        yield server
