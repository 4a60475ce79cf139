"""A dispatcher with a large backlog stays responsive: API latency with N processes queued.

Starts ``corral serve`` with one local node whose slots are all held by sleepers, queues N
more processes behind them (in batches), then times ``describe_process`` calls while the
backlog waits: every tick the dispatcher plans its pool and places what it can, and that
work must not grow with the queue. The baseline is the same calls before anything is
queued. Prints p50/p99/max of both, the ratio of the p99s, and the dispatcher's RSS.

    python bench/backlog.py [--queued 100000] [--calls 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from _serve import Served, pct

from corral import AsyncClient

SLOTS = 4


async def call_latencies(client: AsyncClient, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        await client.describe_process("holder-0")
        out.append((time.perf_counter() - start) * 1000)
        await asyncio.sleep(0.002)  # spread over many ticks (one every 0.2 s)
    return out


def line(name: str, values: list[float]) -> str:
    return (
        f"  {name:28s} p50 {pct(values, 0.5):6.2f} ms  p99 {pct(values, 0.99):6.2f} ms"
        f"  max {max(values):6.1f} ms"
    )


async def run(args: argparse.Namespace) -> None:
    served = Served(
        f"[[engines]]\nid = 'default'\nslots = {SLOTS}\nbase_need = 1\nmaximum_vms = 1\n"
        "launch_ahead = 0\nallow_root = true\n"
    )
    try:
        served.wait_nodes()
        async with AsyncClient(served.url, served.token, timeout=120) as client:
            await client.create_definition(
                "sleeper", "exec", {"exec": "/bin/sleep", "argv": ["600"]}
            )
            for i in range(SLOTS):
                await client.schedule_process(f"holder-{i}", "sleeper", restart_mode="NEVER")
                await client.wait_process(f"holder-{i}", ["RUNNING"], timeout=30)
            empty = await call_latencies(client, args.calls)
            started = time.perf_counter()
            for first in range(0, args.queued, 1000):
                await client.schedule_processes(
                    [
                        {"upid": f"q{i}", "definition_id": "sleeper", "restart_mode": "NEVER"}
                        for i in range(first, min(first + 1000, args.queued))
                    ]
                )
            queued_in = time.perf_counter() - started
            dump = await client.dump()
            waiting = dump["processes"]["by_state"].get("300-WAITING", 0)
            backlog = await call_latencies(client, args.calls)
        print(f"{args.queued} processes queued in {queued_in:.1f} s; {waiting} WAITING")
        print(f"describe_process, {args.calls} calls, one node with {SLOTS} slots all busy:")
        print(line("nothing queued (baseline)", empty))
        print(line(f"{args.queued} queued", backlog))
        print(f"  ratio of p99s: {pct(backlog, 0.99) / pct(empty, 0.99):.2f}")
        print(f"dispatcher RSS with the backlog: {served.rss_kib() / 1024:.1f} MiB")
    finally:
        served.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=2000)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
