"""A writer killed with SIGKILL at random moments leaves only whole, acknowledged batches.

The child commits numbered batches through a GroupCommitter from several tasks and prints
each batch number once its commit returned. Batch ``i`` writes ``N`` keys ``"i:j"`` spread
over every table, all holding ``i``, and overwrites the shared ``hot:j`` keys with ``i``.
After each kill the test reopens the store and checks that every acknowledged batch is
there, that no batch is there in part, and that the hot keys all come from the newest batch
present. A SIGKILL tests crash atomicity and recovery; it cannot show power-loss durability
(the kernel still writes the page cache out), which is what ``synchronous=FULL`` is for.
It runs on both backends (``store_url``): on PostgreSQL the kill cuts the client, and the
server must roll back what the client had not committed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import corral.store
from corral.store import Table, open_store

N = 12
HOT = 4
WORKERS = 8

CHILD = """
import asyncio, itertools, sys
from corral.store import GroupCommitter, Put, Table, open_store

url, first, n, hot, workers = sys.argv[1], *map(int, sys.argv[2:])
tables = list(Table)

def batch(i):
    doc = {"batch": i, "state": 500, "round": i, "assigned": None}
    return [Put(tables[j % len(tables)], f"{i}:{j}", doc) for j in range(n)] + [
        Put(Table.META, f"hot:{j}", doc) for j in range(hot)
    ]

async def main():
    committer = GroupCommitter(open_store(url))
    await committer.start()
    numbers = itertools.count(first)

    async def worker():
        while True:
            i = next(numbers)
            await committer.commit(batch(i))
            print(i, flush=True)

    await asyncio.gather(*(worker() for _ in range(workers)))

asyncio.run(main())
"""


def child_env() -> dict[str, str]:
    # the child must import this very corral, installed or not
    src = str(Path(corral.store.__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": src if not path else f"{src}{os.pathsep}{path}"}


def run_and_kill(url: str, first: int, kill_after: int, jitter: float) -> set[int]:
    """Run the child until it acknowledged ``kill_after`` batches, then SIGKILL it ``jitter``
    seconds later; return the batches it acknowledged."""
    argv = [sys.executable, "-c", CHILD, url, str(first), str(N), str(HOT), str(WORKERS)]
    child = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env()
    )
    assert child.stdout is not None
    lines: list[str] = []
    while len(lines) < kill_after:
        line = child.stdout.readline()
        if not line:
            break
        lines.append(line)
    # an ack is printed just after a transaction, the one moment when none is in progress;
    # the jitter (about one transaction long) moves the kill to a random point of the cycle
    time.sleep(jitter)
    child.kill()
    rest, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, f"the child died by itself:\n{err}"
    # a line cut by the kill was never acknowledged (nor is what is left of one: once, on
    # PostgreSQL under a loaded machine, a lone newline came through)
    lines += rest.splitlines(keepends=True)
    return {int(line) for line in lines if line.endswith("\n") and line.strip()}


def check(url: str, acknowledged: set[int]) -> int:
    """Check the invariants; return the newest batch present (or -1)."""
    store = open_store(url)
    try:
        tables = store.load().tables
    finally:
        store.close()
    keys: Counter[int] = Counter()
    for table in Table:
        for key, doc in tables[table].items():
            if key.startswith("hot:"):
                continue
            batch = int(key.split(":")[0])
            assert doc["batch"] == batch, f"{table}/{key} holds {doc}"
            keys[batch] += 1
    partial = {batch: count for batch, count in keys.items() if count != N}
    assert not partial, f"batches present in part: {partial}"
    missing = acknowledged - keys.keys()
    assert not missing, f"acknowledged batches lost: {sorted(missing)}"
    newest = max(keys, default=-1)
    hot = {tables[Table.META][f"hot:{j}"]["batch"] for j in range(HOT)} if keys else set()
    assert hot <= {newest}, f"hot keys {hot} are not all from the newest batch {newest}"
    return newest


def test_a_killed_writer_leaves_only_whole_acknowledged_batches(store_url: str) -> None:
    seed = int(os.environ.get("CORRAL_CRASH_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    print(f"CORRAL_CRASH_SEED={seed}")  # shown on failure; set it to replay the kill points
    url = store_url
    acknowledged: set[int] = set()
    # 0 kills the child while it starts up (maybe mid-migration), the others mid-stream
    for run, kill_after in enumerate([0, *(rng.randint(1, 1500) for _ in range(6))]):
        jitter = rng.uniform(0, 0.005)
        acks = run_and_kill(url, run * 1_000_000, kill_after, jitter)
        assert len(acks) >= kill_after, "the child stopped early"
        acknowledged |= acks
        check(url, acknowledged)
