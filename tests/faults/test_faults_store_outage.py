"""The store goes away under load (PostgreSQL restarted), or its disk fills up (SQLite).

What is injected: while a submitter thread schedules 400 short processes (retrying each
batch until it is acknowledged), the dispatcher's own PostgreSQL server is stopped, kept
down for two seconds, and started again.

What must hold: the dispatcher rides it out (same process, never restarted: its commits
wait and are retried on a new connection), every process is in the store and ran exactly
once, and nothing is left running.

The SQLite store's disk is a small tmpfs that the tests fill. Below the reserve, new work
is refused with 507 and a message that says why, while work already accepted goes on; once
space returns the same request succeeds. With no reserve, a commit that finds no room stops
the dispatcher (fail-stop) with the reason in its log; the store is never corrupt, and the
dispatcher starts again once space returns.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.errors import CorralError, StoreFull
from corral.testing.postgres import PostgresServer, binaries

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server of this test's own, since the test restarts it."""
    with PostgresServer() as server:
        yield server


@pytest.mark.skipif(binaries() is None, reason="no PostgreSQL server installed")
def test_a_postgresql_restart_under_load_loses_nothing(
    own_postgres: PostgresServer, make_served: Callable[..., Any]
) -> None:
    served = make_served(slots=8, store_url=own_postgres.database())
    served.define("ok", "exit 0")
    pid = served.proc.pid
    upids = [f"p{i:03d}" for i in range(400)]
    submitter = served.submitter(
        [{"upid": u, "definition_id": "ok", "restart_mode": "NEVER"} for u in upids], 20
    )
    time.sleep(0.5)
    own_postgres.restart(down_for=2.0)
    submitter.join(90)
    assert not submitter.is_alive(), "the load was never fully acknowledged"

    client = served.client(timeout=30.0)

    def all_ended() -> dict[str, dict[str, Any]] | None:
        records = {r["upid"]: r for r in client.describe_processes()}
        done = all(records.get(u, {}).get("state") in served.TERMINAL for u in upids)
        return records if done else None

    records = served.wait_until(all_ended, "every process to end", timeout=60.0)
    assert served.runs == 1
    assert served.proc.pid == pid
    assert served.proc.poll() is None, served.log_tail()
    assert not served.duplicate_starts()
    starts = {u: served.starts_of(u) for u in upids}
    wrong = {
        u: (records[u]["state"], records[u]["exit_code"], starts[u])
        for u in upids
        if (records[u]["state"], records[u]["exit_code"], len(starts[u])) != ("800-EXITED", 0, 1)
    }
    assert not wrong, (
        f"{len(wrong)} did not run exactly once and exit 0: {list(wrong.items())[:10]}"
    )
    assert "unreachable, retrying" in served.log_tail(400), "the outage was not even noticed"


# --- the disk of the SQLite store fills up ---------------------------------------------------

DISK_MB = 32


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs of the test's own, so that filling it fills nothing else."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs here: {done.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Write a filler file until fewer than ``leave`` bytes are free on ``disk``."""
    filler = disk / "filler"
    block = b"\0" * (1 << 20)
    with filler.open("wb") as out:
        while (free := shutil.disk_usage(disk).free) > leave:
            try:
                out.write(block[: max(4096, min(len(block), free - leave))])
                out.flush()
            except OSError:
                break
    return filler


def integrity(home: Path) -> str:
    with sqlite3.connect(f"file:{home / 'corral.db'}?mode=ro", uri=True) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def test_new_work_is_refused_below_the_reserve_and_taken_again_once_space_returns(
    small_disk: Path, make_served: Callable[..., Any]
) -> None:
    home = small_disk / "home"
    served = make_served(home=home, top="store_reserve_mb = 8\n")
    client = served.client()
    served.define("ok", "exit 0")
    served.define("svc", "exec sleep 600")
    client.schedule_process("svc", "svc", restart_mode="ALWAYS")
    served.wait_until(lambda: client.describe_process("svc")["state"] == "500-RUNNING", "svc")

    filler = fill(small_disk, leave=4 << 20)
    with served.http() as http:
        answer = http.post("/processes/late/schedule", json={"definition_id": "ok"})
    assert answer.status_code == 507, answer.text
    error = answer.json()["error"]
    assert error["type"] == "StoreFull"
    assert "MiB free" in error["message"]
    assert "store_reserve_mb" in error["message"]
    with pytest.raises(StoreFull):
        client.create_definition("another", "exec", {"exec": "/bin/true"})
    # work already accepted goes on, on the reserve
    client.terminate_process("svc")
    served.wait_until(lambda: client.describe_process("svc")["state"] == "700-TERMINATED", "end")
    assert integrity(home) == "ok"

    filler.unlink()
    client.schedule_process("late", "ok", restart_mode="NEVER")
    record = client.wait_process("late", ["EXITED"], timeout=20)
    assert record["exit_code"] == 0
    assert served.runs == 1
    assert integrity(home) == "ok"


def test_a_disk_that_fills_completely_stops_the_dispatcher_cleanly_and_it_starts_again(
    small_disk: Path, make_served: Callable[..., Any]
) -> None:
    home = small_disk / "home"
    served = make_served(home=home, top="store_reserve_mb = 0\n")
    client = served.client()
    served.define("ok", "exit 0")
    client.schedule_process("before", "ok", restart_mode="NEVER")
    client.wait_process("before", ["EXITED"], timeout=20)

    filler = fill(small_disk, leave=0)
    with contextlib.suppress(CorralError):
        for i in range(200):  # one of these writes finds no room: the dispatcher stops
            client.schedule_process(f"full-{i}", "ok", restart_mode="NEVER")
    served.proc.wait(20)
    assert served.proc.returncode != 0
    assert "disk is full (free some disk space)" in served.log_tail(100)
    assert integrity(home) == "ok"

    filler.unlink()
    served.start()
    client = served.client()
    assert client.describe_process("before")["state"] == "800-EXITED"
    client.schedule_process("after", "ok", restart_mode="NEVER")
    assert client.wait_process("after", ["EXITED"], timeout=20)["exit_code"] == 0
    for record in client.describe_processes():
        if record["upid"].startswith("full-"):  # acknowledged before the disk filled
            assert record["state"] in served.TERMINAL, record
