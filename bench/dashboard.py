"""Dashboard load times with 10,000 processes in the store, against the raw process list.

Writes N process records (finished, failed, terminated, created, and some waiting on a
constraint no node meets) and their state histories straight into a fresh SQLite store,
starts ``corral serve`` on it, and times over HTTP each data route the dashboard's pages
read, beside the baseline ``GET /processes`` (``describe_processes``: every record). Then,
if Debian's chromium is installed, it loads the processes page and one process's page in
headless Chromium (Playwright), from a blank page to the data shown, and prints those
times too: as the driver waits for them (with its own round trips), and by the browser's
clock (navigation start to the page's ``corral:data-shown`` mark). The target: the
process pages load in under 300 ms.

    python bench/dashboard.py [--processes 10000] [--repeat 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import httpx
from _serve import Served

from corral.api import assets
from corral.core.ids import DefinitionId, Round, Upid
from corral.core.model import Definition, Executable, ProcessRecord, ProcessRequest
from corral.core.process_states import ProcessState
from corral.store import Put, Table, open_store

CONFIG = """
[[engines]]
id = "default"
driver = "local"
allow_root = true  # the benchmarks may run as root
slots = 4
base_need = 1
maximum_vms = 1
"""
CHROMIUM = "/usr/bin/chromium"
TARGET_MS = 300.0
#: what each tenth of the processes is, and the states it went through
_KINDS = [
    *[(ProcessState.EXITED, "exited with status 0")] * 6,
    (ProcessState.FAILED, "exited with status 1"),
    (ProcessState.TERMINATED, "terminate requested"),
    (ProcessState.UNSCHEDULED, None),
    (ProcessState.WAITING, "no node of engine 'default' matches constraints zone=none"),
]
_PATH = {
    ProcessState.EXITED: [200, 350, 400, 500, 800],
    ProcessState.FAILED: [200, 350, 400, 500, 850],
    ProcessState.TERMINATED: [200, 350, 400, 500, 600, 700],
    ProcessState.UNSCHEDULED: [100],
    ProcessState.WAITING: [200, 300],
}


def fill(home: str, count: int) -> None:
    store = open_store(f"sqlite:///{home}/corral.db")
    definition = Definition(DefinitionId("job"), "exec", Executable("/bin/true"))
    start = time.time() - count
    changes: list[Put] = [Put(Table.DEFINITIONS, "job", definition.as_doc())]
    for i in range(count):
        state, reason = _KINDS[i % len(_KINDS)]
        created = start + i
        waiting = state is ProcessState.WAITING
        record = ProcessRecord(
            upid=Upid(f"p{i:07d}"),
            request=ProcessRequest(
                DefinitionId("job"),
                name=f"job {i % 97}",
                constraints={"zone": "none"} if waiting else {},
            ),
            state=state,
            round=Round(0 if state is ProcessState.UNSCHEDULED else 1),
            scheduled=state is not ProcessState.UNSCHEDULED,
            starts=0 if state in (ProcessState.UNSCHEDULED, ProcessState.WAITING) else 1,
            waiting_reason=reason if waiting else None,
            end_reason=None if waiting else reason,
            created_at=created,
            updated_at=created + 0.5,
        )
        changes.append(Put(Table.PROCESSES, record.upid, record.as_doc()))
        for n, step in enumerate(_PATH[state]):
            doc = {"u": record.upid, "n": n, "r": record.round, "s": step, "t": created + n / 10}
            changes.append(Put(Table.HISTORY, f"{record.upid}/{n}", doc))
        if len(changes) >= 20_000:
            store.apply(changes)
            changes = []
    store.apply(changes)
    store.close()


def timed(call: Callable[[], Any], repeat: int) -> list[float]:
    call()  # warm: the first request pays for imports and connections
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        call()
        times.append((time.perf_counter() - began) * 1000)
    return times


def row(label: str, times: list[float], baseline: float | None) -> None:
    median = statistics.median(times)
    p95 = sorted(times)[max(0, int(len(times) * 0.95) - 1)]
    ratio = f"{baseline / median:6.1f}× faster" if baseline else ""
    print(f"  {label:<54} {median:7.1f} ms  p95 {p95:7.1f} ms  {ratio}")


def http_figures(served: Served, upid: str, repeat: int) -> float:
    with httpx.Client(base_url=served.url, timeout=60.0) as http:
        http.headers["Authorization"] = f"Bearer {served.token}"

        def get(path: str, **params: Any) -> Callable[[], Any]:
            return lambda: http.get(path, params=params).raise_for_status().json()

        print("HTTP, through the real dispatcher (median of", repeat, "requests):")
        baseline = statistics.median(timed(get("/processes"), repeat))
        row("baseline: GET /processes (all records)", [baseline], None)
        page = timed(get("/ui/api/processes", limit=50), repeat)
        row("/ui/api/processes, first page of 50", page, baseline)
        filtered = get("/ui/api/processes", state="850-FAILED", q="job 1", sort="upid", limit=50)
        row("/ui/api/processes, filtered and sorted", timed(filtered, repeat), baseline)
        one = timed(
            lambda: (get(f"/processes/{upid}")(), get(f"/processes/{upid}/history")()), repeat
        )
        row("one process: record + history", one, baseline)
        row("/ui/api/overview", timed(get("/ui/api/overview"), repeat), baseline)
        shell = ["/ui/", *(f"{assets.PREFIX}/{name}" for name in assets.FILES)]

        def files() -> None:
            for path in shell:
                http.get(path).raise_for_status()

        row("the page and all its files, uncached", timed(files, repeat), baseline)
        return baseline


def browser_figures(served: Served, upid: str, repeat: int, baseline: float) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    figures: dict[str, float] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--disable-background-networking", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{served.url}/ui/login")
        page.fill("#token", served.token)
        page.click("button[type=submit]")
        page.wait_for_selector("body[data-loaded]", state="attached")

        shown: list[float] = []

        def load(route: str) -> Callable[[], None]:
            def go() -> None:
                page.goto("about:blank")
                page.goto(f"{served.url}/ui/#/{route}")
                page.wait_for_selector("body[data-loaded]", state="attached")
                # the browser's own clock: from the start of navigation to the data shown
                mark = "() => performance.getEntriesByName('corral:data-shown')[0].startTime"
                shown.append(page.evaluate(mark))

            return go

        def fetch_all() -> None:
            page.evaluate("async () => (await (await fetch('/processes')).json()).length")

        print("Headless Chromium, from a blank page to the data shown (median of", repeat, "):")
        page.goto(f"{served.url}/ui/")
        raw = statistics.median(timed(fetch_all, repeat))
        row("baseline: fetch('/processes') + JSON.parse", [raw], None)
        pages = (
            ("processes page (50 of them)", "processes"),
            ("a process's page", f"processes/{upid}"),
        )
        for label, route in pages:
            shown.clear()
            times = timed(load(route), repeat)
            figures[label] = statistics.median(times)
            row(f"{label}, as Playwright waits", times, raw)
            row(f"{label}, by the browser's clock", shown[1:], raw)
        browser.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    began = time.perf_counter()
    served = Served(config=CONFIG, prepare=lambda home: fill(home, args.processes))
    try:
        print(
            f"{args.processes:,} processes in the store; corral serve ready in"
            f" {time.perf_counter() - began:.1f} s (filling included)"
        )
        upid = f"p{args.processes // 2:07d}"
        baseline = http_figures(served, upid, args.repeat)
        if os.path.exists(CHROMIUM):
            figures = browser_figures(served, upid, max(5, args.repeat // 3), baseline)
            worst = max(figures.values())
            verdict = "under" if worst < TARGET_MS else "OVER"
            print(f"target: process pages in < {TARGET_MS:.0f} ms: {verdict} ({worst:.0f} ms)")
        else:
            print(f"{CHROMIUM} is not installed: no browser figures (apt-get install chromium)")
    finally:
        served.stop()


if __name__ == "__main__":
    main()
