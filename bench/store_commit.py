"""Commits per second through GroupCommitter versus one transaction per change.

1,000 asyncio tasks each commit single-change transactions to a SQLite store, first through
a `GroupCommitter`, then with one `apply` per change on the same kind of dedicated writer
thread (no grouping). Each mode writes a fresh file in the same directory, so both pay the
same fsync. Run from the repository root::

    PYTHONPATH=src .venv/bin/python bench/store_commit.py [--synchronous NORMAL] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from corral.store import GroupCommitter, Put, SQLiteStore, Table
from corral.store.sqlite import Synchronous


def change(task: int, n: int) -> Put:
    # about the size of a real process record
    doc = {
        "state": 500,
        "round": n,
        "assigned": f"node-{task % 50}",
        "definition_id": "sleeper",
        "parameters": {"argv": ["sleep", "60"], "env": {"MODE": "bench"}},
        "constraints": {"engine": "default"},
    }
    return Put(Table.PROCESSES, f"proc-{task}", doc)


async def grouped(store: SQLiteStore, tasks: int, each: int) -> tuple[float, str]:
    committer = GroupCommitter(store)
    await committer.start()

    async def worker(task: int) -> None:
        for n in range(each):
            await committer.commit([change(task, n)])

    start = time.perf_counter()
    await asyncio.gather(*(worker(task) for task in range(tasks)))
    elapsed = time.perf_counter() - start
    await committer.aclose()
    stats = committer.statistics()
    detail = f"{stats.transactions} transactions, largest {stats.largest_batch} changes"
    return tasks * each / elapsed, detail


async def one_apply_each(store: SQLiteStore, tasks: int, each: int) -> tuple[float, str]:
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=1) as writer:

        async def worker(task: int) -> None:
            for n in range(each):
                await loop.run_in_executor(writer, store.apply, [change(task, n)])

        start = time.perf_counter()
        await asyncio.gather(*(worker(task) for task in range(tasks)))
        elapsed = time.perf_counter() - start
    return tasks * each / elapsed, f"{tasks * each} transactions"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--grouped-each", type=int, default=20, help="commits per task, grouped")
    parser.add_argument("--single-each", type=int, default=5, help="commits per task, ungrouped")
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    parser.add_argument("--dir", type=Path, default=None, help="where the files go (a temp dir)")
    args = parser.parse_args()
    synchronous: Synchronous = "FULL" if args.synchronous == "FULL" else "NORMAL"

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(f"SQLite synchronous={synchronous}, {args.tasks} concurrent tasks, files in {tmp}")
        rates = {}
        for name, bench, each in (
            ("group commit", grouped, args.grouped_each),
            ("one apply per change", one_apply_each, args.single_each),
        ):
            store = SQLiteStore(Path(tmp) / f"{name.replace(' ', '-')}.db", synchronous=synchronous)
            try:
                rate, detail = asyncio.run(bench(store, args.tasks, each))
            finally:
                store.close()
            rates[name] = rate
            print(
                f"  {name:<22} {rate:>10,.0f} commits/s  ({args.tasks * each:,} commits; {detail})"
            )
        ratio = rates["group commit"] / rates["one apply per change"]
        print(f"  ratio                  {ratio:>10.1f}x")


if __name__ == "__main__":
    main()
