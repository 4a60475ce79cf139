"""A chatty process's log keeps the engine's ``log_max_bytes``: ``corral process logs``
shows the newest output and says what was dropped, and the node's disk holds no more."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import CONFIG, Cli, Served, start_served

KEEP = 64 << 10


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    config = CONFIG.replace("maximum_vms = 1\n", f"maximum_vms = 1\nlog_max_bytes = {KEEP}\n")
    server = start_served(tmp_path_factory.mktemp("logs") / "home", config)
    yield server
    with contextlib.suppress(Exception):
        server.stop()


def test_the_newest_output_is_kept_and_the_drop_is_said(served: Served, cli: Cli) -> None:
    home = served.home
    for command in (
        "definition create count --exec /usr/bin/seq --arg 1 --arg 300000",
        "process schedule chatty count",
        "process wait chatty --timeout 30",
    ):
        run = cli(command)
        assert run.code == 0, run
    written = "".join(f"{i}\n" for i in range(1, 300_001)).encode()
    shown = cli("process logs chatty")
    assert shown.code == 0, shown
    assert "bytes of this log were dropped" in shown.err
    kept = shown.out.encode()
    assert KEEP <= len(kept) < len(written) // 4
    assert written.endswith(kept)  # the newest bytes, whole
    (log,) = Path(home / "nodes").glob("*/logs/chatty.stdout")
    on_disk = log.stat()
    assert on_disk.st_size == len(written)
    assert on_disk.st_blocks * 512 <= 2 * KEEP + (64 << 10)
