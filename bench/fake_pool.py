"""The dispatcher end to end on the fake driver: placements through the store, launches to
simulated agents, RUNNING reports back.

Starts ``corral serve`` with one fake engine, submits N processes over HTTP in batches and
times until all are RUNNING (every state change committed to SQLite on the way), against
the 5,000/s target (Nomad's C1M placed 3,750/s on 5 servers). Then, for each boot delay d,
times how long a burst of 200 processes waits for a pool that must boot nodes for it; and
last, how long 10,000 simulated nodes take to join, and how fast processes start on them.

    python bench/fake_pool.py [--processes 20000] [--nodes 100] [--slots 256]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from _serve import Served

from corral import AsyncClient

TARGET = 5_000


def config(nodes: int, slots: int, boot_delay: float, base_need: int) -> str:
    return f"""
[[engines]]
id = "sim"
driver = "fake"
slots = {slots}
base_need = {base_need}
maximum_vms = {nodes}
idle_timeout = 600.0
heartbeat_period = 1.0
driver_options = {{ boot_delay = {boot_delay} }}
"""


async def wait_running(client: AsyncClient, count: int) -> None:
    while True:
        running = (await client.dump())["processes"]["by_state"].get("500-RUNNING", 0)
        if running >= count:
            return
        await asyncio.sleep(0.02)


async def throughput(args: argparse.Namespace) -> None:
    served = Served(config(args.nodes, args.slots, 0.0, args.nodes))
    try:
        served.wait_nodes(args.nodes, timeout=60)
        async with AsyncClient(served.url, served.token, timeout=120) as client:
            await client.create_definition(
                "forever", "exec", {"exec": "/bin/sleep", "argv": ["infinity"]}
            )
            start = time.perf_counter()
            batches = [
                [
                    {"upid": f"p{i}", "definition_id": "forever"}
                    for i in range(first, min(first + args.batch, args.processes))
                ]
                for first in range(0, args.processes, args.batch)
            ]
            # a few requests in flight at a time, as several submitters would
            for chunk in range(0, len(batches), 4):
                await asyncio.gather(
                    *(client.schedule_processes(b) for b in batches[chunk : chunk + 4])
                )
            submitted = time.perf_counter() - start
            await wait_running(client, args.processes)
            took = time.perf_counter() - start
        rate = args.processes / took
        print(
            f"{args.processes:,} processes on {args.nodes} fake nodes x {args.slots} slots: "
            f"submitted in {submitted:.2f} s, all RUNNING after {took:.2f} s"
        )
        print(
            f"  {rate:,.0f} placed and running per second "
            f"(target {TARGET:,}/s, ratio {rate / TARGET:.2f})"
        )
        print(f"  dispatcher RSS: {served.rss_kib() / 1024:.0f} MiB")
    finally:
        served.stop()


async def burst(delay: float) -> float:
    served = Served(config(25, 8, delay, 1))
    try:
        served.wait_nodes(1, timeout=60)
        async with AsyncClient(served.url, served.token, timeout=60) as client:
            await client.create_definition(
                "forever", "exec", {"exec": "/bin/sleep", "argv": ["infinity"]}
            )
            start = time.perf_counter()
            await client.schedule_processes(
                [{"upid": f"b{i}", "definition_id": "forever"} for i in range(200)]
            )
            await wait_running(client, 200)
            return time.perf_counter() - start
    finally:
        served.stop()


async def ten_thousand_nodes(count: int, processes: int) -> None:
    start = time.perf_counter()
    served = Served(config(count, 2, 0.0, count))
    try:
        served.wait_nodes(count, timeout=600)
        joined = time.perf_counter() - start
        print(
            f"{count:,} fake nodes joined in {joined:.1f} s; "
            f"dispatcher RSS {served.rss_kib() / 1024:.0f} MiB"
        )
        async with AsyncClient(served.url, served.token, timeout=120) as client:
            await client.create_definition(
                "forever", "exec", {"exec": "/bin/sleep", "argv": ["infinity"]}
            )
            start = time.perf_counter()
            for first in range(0, processes, 500):
                await client.schedule_processes(
                    [
                        {"upid": f"p{i}", "definition_id": "forever"}
                        for i in range(first, min(first + 500, processes))
                    ]
                )
            await wait_running(client, processes)
            took = time.perf_counter() - start
        print(
            f"  {processes:,} processes RUNNING on them after {took:.2f} s "
            f"({processes / took:,.0f}/s); dispatcher RSS {served.rss_kib() / 1024:.0f} MiB"
        )
    finally:
        served.stop()


async def run(args: argparse.Namespace) -> None:
    await throughput(args)
    print("burst of 200 processes on 1 node of 8 slots (the pool boots 24 more):")
    for delay in (0.5, 1.0, 2.0):
        took = await burst(delay)
        print(
            f"  boot delay d = {delay:.1f} s: all RUNNING after {took:.2f} s ({took / delay:.2f} d)"
        )
    await ten_thousand_nodes(10_000, 20_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=20_000)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--slots", type=int, default=256)
    parser.add_argument("--batch", type=int, default=500)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
