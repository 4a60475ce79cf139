"""SIGKILL the dispatcher 20 times while it runs a load of 1,000 processes of mixed modes.

What is injected: a submitter thread schedules 1,000 processes in batches (retrying each
batch until it is acknowledged, as a client of an idempotent API would), while the main
thread SIGKILLs the dispatcher at 20 moments drawn from a seeded generator and starts it
again each time. The agent lives on throughout. Runs on SQLite and on PostgreSQL.

What must hold afterwards, counted from the start file the processes append to (the OS's
view, not the dispatcher's):
- every process scheduled is in the store (nothing acknowledged is lost, nothing that
  was retried was made twice);
- no round of any process was started twice;
- each process ended as its modes say: restart NEVER ones started once, ABNORMAL ones
  that fail their first round ran again until they succeeded, a queueing-NEVER one either
  ran once or was rejected without running, services run exactly one copy each;
- nothing is left running but the services.

``CORRAL_FAULTS_SEED=<seed>`` replays the same kill moments.
"""

from __future__ import annotations

import os
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from corral import Client
from corral.testing.postgres import PostgresServer

SEED_ENV = "CORRAL_FAULTS_SEED"
KILLS = 20
BATCH = 50
FAST_RESTARTS = {"corral": {"restart": {"backoff_initial": 0.05, "backoff_max": 0.2}}}

pytestmark = pytest.mark.timeout(300)


@dataclass(frozen=True)
class Kind:
    """A kind of process in the load: how it runs and what its end must be."""

    count: int
    definition: str
    params: dict[str, Any]


KINDS = {
    "once": Kind(480, "ok", {"restart_mode": "NEVER"}),
    "fail": Kind(150, "bad", {"restart_mode": "NEVER"}),
    "abn": Kind(150, "flaky", {"restart_mode": "ABNORMAL", "configuration": FAST_RESTARTS}),
    "startonly": Kind(100, "ok", {"restart_mode": "NEVER", "queueing_mode": "START_ONLY"}),
    "neverq": Kind(117, "ok", {"restart_mode": "NEVER", "queueing_mode": "NEVER"}),
    "svc": Kind(3, "svc", {"restart_mode": "ALWAYS", "configuration": FAST_RESTARTS}),
}


def _load() -> list[dict[str, Any]]:
    processes = [
        {"upid": f"{name}-{i:03d}", "definition_id": kind.definition, **kind.params}
        for name, kind in KINDS.items()
        for i in range(kind.count)
    ]
    random.Random(0).shuffle(processes)
    return processes


@pytest.fixture(params=["sqlite", "postgresql"])
def load_served(request: pytest.FixtureRequest, make_served: Callable[..., Any]) -> Any:
    """``corral serve`` on each store backend, with eight slots."""
    store_url = None
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        store_url = server.database()
    return make_served(slots=8, store_url=store_url)


def test_twenty_dispatcher_sigkills_under_a_load_of_mixed_modes(load_served: Any) -> None:
    served = load_served
    seed = int(os.environ.get(SEED_ENV) or random.randrange(2**32))
    rng = random.Random(seed)
    replay = f"replay with {SEED_ENV}={seed}"
    print(replay)
    served.define("ok", "exit 0")
    served.define("bad", "exit 3")
    served.define("flaky", '[ "$CORRAL_ROUND" -gt 1 ] && exit 0; exit 1')
    served.define("svc", "exec sleep 600")
    processes = _load()

    submitter = served.submitter(processes, BATCH)
    for _ in range(KILLS):
        time.sleep(rng.uniform(0.05, 0.6))
        served.kill()
        served.start()
    submitter.join(120)
    assert not submitter.is_alive(), "the load was never fully acknowledged"
    print(f"{len(submitter.acknowledged)} acknowledged after {submitter.retries} retries")

    client = served.client(timeout=30.0)
    upids = [p["upid"] for p in processes]

    records = _settle(client, upids, served.TERMINAL, replay)
    problems = _problems(served, upids, records)
    assert not problems, f"{replay}\n" + "\n".join(problems[:40])


def _settle(
    client: Client, upids: list[str], terminal: frozenset[str], replay: str
) -> dict[str, dict[str, Any]]:
    """Wait until every process has ended (services: runs); the records, by upid."""
    deadline = time.monotonic() + 120.0
    while True:
        records = {r["upid"]: r for r in client.describe_processes()}
        unsettled = {
            upid: (records[upid]["state"], records[upid]["waiting_reason"])
            if upid in records
            else "missing"
            for upid in upids
            if upid not in records
            or records[upid]["state"] not in ({"500-RUNNING"} if upid[:4] == "svc-" else terminal)
        }
        if not unsettled:
            return records
        if time.monotonic() > deadline:
            sample = dict(list(unsettled.items())[:20])
            raise AssertionError(f"{len(unsettled)} never settled ({replay}): {sample}")
        time.sleep(0.2)


def _problems(served: Any, upids: list[str], records: dict[str, dict[str, Any]]) -> list[str]:
    problems = []
    missing = sorted(set(upids) - set(records))
    if missing:
        problems.append(f"scheduled but not in the store: {missing}")
    for upid, round_ in served.duplicate_starts():
        problems.append(f"{upid} round {round_} was started twice")
    starts: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for upid, round_, pid in served.starts():
        starts[upid].append((round_, pid))
    for upid in upids:
        record, ran = records[upid], starts.get(upid, [])
        problem = _end_problem(served, upid, record, ran)
        if problem:
            summary = (
                f"{record['state']} exit {record['exit_code']}, round {record['round']},"
                f" started (round, pid) {ran}"
            )
            problems.append(f"{upid} {problem}: {summary}")
    return problems


#: the ends each kind may have: (state, exit code, how many starts); None matches anything
ENDS: dict[str, list[tuple[str, int | None, int | None]]] = {
    "once": [("800-EXITED", 0, 1)],
    "startonly": [("800-EXITED", 0, 1)],
    "fail": [("850-FAILED", 3, 1)],
    "neverq": [("800-EXITED", 0, 1), ("900-REJECTED", None, 0)],
}


def _end_problem(
    served: Any, upid: str, record: dict[str, Any], ran: list[tuple[int, int]]
) -> str | None:
    """What is wrong with how ``upid`` ended, or None."""
    kind = upid.split("-")[0]
    alive = [pid for _, pid in ran if served.pid_alive(pid)]
    if kind == "svc":
        return None if alive == [record["pid"]] else "does not run exactly its recorded copy"
    if alive:
        return f"still runs {alive}"
    if kind == "abn":
        ok = record["state"] == "800-EXITED" and len(ran) >= 2
        return None if ok else "should have failed, run again and exited 0"
    for state, code, count in ENDS[kind]:
        if record["state"] == state and code in (None, record["exit_code"]) and len(ran) == count:
            return None
    return f"should have ended as one of {ENDS[kind]}"
