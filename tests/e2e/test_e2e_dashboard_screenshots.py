"""Screenshots of every page of the dashboard at 1280×800, over a dispatcher with some life.

The dispatcher hosts the pipelines' event queue (``corral serve --queue``) and runs
services, finished and failed jobs, a process that cannot be placed, a shared compute pool
and a pipeline's worker; a client holds some of the queue's events. Each page is shot once
its data is shown. The PNGs go to the directory ``CORRAL_SCREENSHOTS`` names (the README's
come from ``CORRAL_SCREENSHOTS=docs/screenshots``), else to a temporary one, so that an
ordinary run of the suite leaves the working tree as it was.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import CONFIG, VIEWPORT, Served
from corral.queue import BlockingQueueClient

pytestmark = pytest.mark.timeout(120)

PAGES = [
    ("overview", ""),
    ("processes", "processes"),
    ("process", "processes/web-1"),
    ("nodes", "nodes"),
    ("node", None),  # the node's id is known once it has joined
    ("computations", "computations"),
    ("pipelines", "pipelines"),
    ("audit", "audit"),
]
SERVICE = 'i=0; while true; do i=$((i+1)); echo "GET /status 200 ($i)"; sleep 0.3; done'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A dispatcher with eight slots on its node and an event queue of its own."""
    home = tmp_path_factory.mktemp("screens") / "home"
    queue_port = free_port()
    server = Served(home, CONFIG.replace("slots = 4", "slots = 8"))
    server.argv += ["--queue", f"127.0.0.1:{queue_port}"]
    server.queue_port = queue_port  # type: ignore[attr-defined]
    try:
        server.start()
        server.wait_nodes()
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()


def define(api: httpx.Client, definition_id: str, exec_: str, *argv: str) -> None:
    executable = {"exec": exec_, "argv": list(argv)}
    body = {"definition_id": definition_id, "definition_type": "exec", "executable": executable}
    api.post("/definitions", json=body).raise_for_status()


def schedule(api: httpx.Client, upid: str, **body: Any) -> None:
    api.post(f"/processes/{upid}/schedule", json=body).raise_for_status()


def populate(api: httpx.Client) -> None:
    define(api, "web", "/bin/sh", "-c", SERVICE)
    define(api, "report", "/bin/sh", "-c", "echo report written")
    define(api, "convert", "/bin/sh", "-c", "echo 'cannot open input' >&2; exit 3")
    define(api, "corral-compute-worker", "/bin/sleep", "600")
    define(api, "pipeline-fits", "/bin/sleep", "600")
    for i in (1, 2):
        schedule(api, f"web-{i}", definition_id="web", name="status service")
    for i in range(1, 4):
        schedule(api, f"report-{i}", definition_id="report", restart_mode="NEVER")
    schedule(api, "convert-1", definition_id="convert", restart_mode="NEVER")
    schedule(api, "train-1", definition_id="report", constraints={"gpu": "a100"})
    for i in (0, 1):
        schedule(
            api,
            f"corral-pool-shared-w{i}",
            definition_id="corral-compute-worker",
            name="compute pool shared",
            configuration={"compute": {"pool": "shared", "secret": "not shown here"}},
        )
    schedule(api, "pipeline-fits-w0", definition_id="pipeline-fits")


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", path
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def test_every_page_is_shot_at_1280_by_800(dashboard: Any, served: Any, tmp_path: Path) -> None:
    target = Path(os.environ.get("CORRAL_SCREENSHOTS") or tmp_path)
    target.mkdir(parents=True, exist_ok=True)
    secret = (served.home / "queue_secret").read_text().strip()
    queue = BlockingQueueClient("127.0.0.1", served.queue_port, secret, "fits-worker-1")
    with served.http() as api:
        populate(api)
        queue.connect()
        files = [(f"night-12/img-{n:04d}.fits", False) for n in range(1, 8)]
        queue.put("fits", [("next_file", {"path": path}, recurrent) for path, recurrent in files])
        queue.put("fits", [("nightly_summary", {"night": 12}, True)])
        queue.take("fits", limit=2)
        for upid in ("web-1", "web-2", "corral-pool-shared-w0"):
            api.get(f"/processes/{upid}/wait", params={"state": "RUNNING", "timeout": 20})
        page = dashboard.anonymous()
        page.goto(f"{served.url}/ui/login")
        page.screenshot(path=str(target / "login.png"))
        page = dashboard.log_in()
        # an operator's own action, for the audit log and the process's history
        dashboard.go(page, "processes/web-1")
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("button[data-action=restart]")
        api.get("/processes/web-1/wait", params={"state": "RUNNING", "timeout": 20})
        node = api.get("/nodes").json()[0]["node_id"]
        time.sleep(1.5)  # some lines in the service's log
        for name, route in PAGES:
            dashboard.go(page, route if route is not None else f"nodes/{node}")
            page.wait_for_timeout(400)  # the chart and the log settle
            page.evaluate("document.getElementById('toast').hidden = true")
            page.screenshot(path=str(target / f"{name}.png"))
    queue.close()
    shots = sorted(p.name for p in target.glob("*.png"))
    assert shots == sorted(["login.png", *(f"{name}.png" for name, _ in PAGES)])
    for shot in shots:
        assert png_size(target / shot) == (VIEWPORT["width"], VIEWPORT["height"]), shot


def test_the_shots_show_what_the_pages_hold(dashboard: Any, served: Any) -> None:
    # the same dispatcher, after the shots: the pages did show their data
    page = dashboard.log_in(route="pipelines")
    assert "pending" in page.inner_text("#queue")
    assert "fits-worker-1" in page.inner_text("#queue")
    dashboard.go(page, "computations")
    assert "shared pool: shared" in page.inner_text("#computations")
    dashboard.go(page, "processes/train-1")
    assert page.inner_text("#waiting-reason")
    dashboard.go(page, "audit")
    assert "restart_process" in page.inner_text("#audit-table")
