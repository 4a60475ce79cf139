"""Forgetting ended processes: how fast a backlog of expired ones goes, and whether the API
stays responsive meanwhile.

Fills a fresh SQLite store with N processes that exited two days ago (as a dispatcher
that ran batch jobs before it had a retention would hold), starts ``corral serve`` on it
with the default retention (a day), and times ``describe_process`` of a running process
while the dispatcher forgets them, a batch per transaction; then the same calls once all
are gone, the baseline. Prints how long the N took to go, p50/p99/max of both, the ratio
of the p99s, and the dispatcher's RSS before and after.

    python bench/retention.py [--processes 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from _serve import Served, pct
from backlog import line
from memory import fill

from corral import AsyncClient

TWO_DAYS = 2 * 86_400.0


async def latencies(client: AsyncClient, until_forgotten: bool) -> tuple[list[float], float]:
    """``describe_process`` latencies: until nothing is left to forget, or 500 of them; and
    the time they ended."""
    out: list[float] = []
    while until_forgotten or len(out) < 500:
        start = time.perf_counter()
        await client.describe_process("live")
        out.append((time.perf_counter() - start) * 1000)
        if until_forgotten and len(out) % 20 == 0:
            until_forgotten = (await client.dump())["processes"]["total"] > 1
        await asyncio.sleep(0.002)
    return out, time.perf_counter()


async def run(args: argparse.Namespace) -> None:
    started: list[float] = []

    def prepare(home: str) -> None:
        fill(home, args.processes, age=TWO_DAYS)
        started.append(time.perf_counter())  # corral serve starts now

    served = Served(
        "[[engines]]\nid = 'default'\nslots = 2\nbase_need = 1\nmaximum_vms = 1\n"
        "allow_root = true\n",
        prepare=prepare,
    )
    try:
        print(f"API up {time.perf_counter() - started[0]:.1f} s after corral serve started")
        served.wait_nodes()
        rss_before = served.rss_kib() / 1024
        async with AsyncClient(served.url, served.token, timeout=120) as client:
            await client.create_definition(
                "sleeper", "exec", {"exec": "/bin/sleep", "argv": ["600"]}
            )
            await client.schedule_process("live", "sleeper", restart_mode="NEVER")
            during, gone_at = await latencies(client, until_forgotten=True)
            after, _ = await latencies(client, until_forgotten=False)
            rss_after = served.rss_kib() / 1024
            await client.terminate_process("live")
        print(
            f"{args.processes} processes ended two days ago, retention a day: all forgotten"
            f" {gone_at - started[0]:.1f} s after corral serve started, loading them included"
            f" (at least {args.processes / (gone_at - started[0]):.0f}/s, batches of 1000)"
        )
        print("describe_process of a running process:")
        print(line("while forgetting", during))
        print(line("nothing to forget (baseline)", after))
        print(f"  ratio of the p99s: {pct(during, 0.99) / pct(after, 0.99):.2f}")
        print(f"dispatcher RSS: {rss_before:.1f} MiB at start, {rss_after:.1f} MiB after")
    finally:
        served.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=200_000)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
