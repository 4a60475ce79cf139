"""Dispatcher memory with many processes in the store, against an empty store.

Writes N finished process records straight into a fresh SQLite store (as a long-lived
dispatcher accumulates them), starts ``corral serve`` on it, and prints its resident
memory and start-up time beside those of a dispatcher on an empty store.

    python bench/memory.py [--processes 100000]
"""

from __future__ import annotations

import argparse
import time

from _serve import Served

from corral.core.ids import DefinitionId, NodeId, Round, Upid
from corral.core.model import Definition, Executable, ProcessRecord, ProcessRequest
from corral.core.process_states import ProcessState
from corral.store import Put, Table, open_store


def fill(home: str, count: int, age: float = 0.0) -> None:
    """``count`` processes that exited ``age`` seconds ago, straight into ``home``'s store."""
    store = open_store(f"sqlite:///{home}/corral.db")
    definition = Definition(DefinitionId("true"), "exec", Executable("/bin/true"))
    now = time.time() - age
    changes: list[Put] = [Put(Table.DEFINITIONS, "true", definition.as_doc())]
    for i in range(count):
        record = ProcessRecord(
            upid=Upid(f"p{i:07d}"),
            request=ProcessRequest(DefinitionId("true"), configuration={"index": i}),
            state=ProcessState.EXITED,
            round=Round(1),
            scheduled=True,
            assigned=NodeId("gone-node"),
            hostname="host",
            starts=1,
            exit_code=0,
            end_reason="exited with status 0",
            created_at=now,
            updated_at=now,
            started_at=now,
            ended_at=now,
        )
        changes.append(Put(Table.PROCESSES, record.upid, record.as_doc()))
        if len(changes) >= 10_000:
            store.apply(changes)
            changes = []
    store.apply(changes)
    store.close()


def measure(count: int) -> tuple[float, float]:
    served = Served.prepared(lambda home: fill(home, count) if count else None)
    try:
        served.wait_nodes()
        return served.rss_kib() / 1024, served.started_in
    finally:
        served.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=100_000)
    args = parser.parse_args()
    empty_rss, empty_start = measure(0)
    full_rss, full_start = measure(args.processes)
    print(f"empty store: RSS {empty_rss:.1f} MiB, API up in {empty_start:.2f} s")
    print(
        f"{args.processes} processes: RSS {full_rss:.1f} MiB, API up in {full_start:.2f} s "
        f"({(full_rss - empty_rss) * 1024 / args.processes:.2f} KiB per process)"
    )


if __name__ == "__main__":
    main()
