"""Launch throughput and latency: corral over HTTP against plain subprocess spawning.

Schedules N processes of /bin/true through the HTTP API (one local node, slots = 2 ×
cores, every state change durable) and, in the same run, spawns the same N with plain
``subprocess`` two at a time. Prints both rates and their ratio, corral's rate once the
batch is taken in (from 10 % to 90 % started), then the submit→RUNNING
latency (p50/p99) of 200 sequential processes, and how long a healthy service killed with
SIGKILL takes to be RUNNING again.

    python bench/launch.py [--processes 2000] [--batch 100] [--tls]

``--tls`` runs the dispatcher with ``corral serve --tls``: the API and the agent link over TLS.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from _serve import Served, cores, pct

from corral import AsyncClient


def plain_spawn_rate(count: int) -> float:
    def spawn(n: int) -> None:
        for _ in range(n):
            subprocess.run(["/bin/true"], check=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(spawn, [count // 2, count - count // 2]))
    return count / (time.perf_counter() - start)


async def corral_rate(client: AsyncClient, count: int, batch: int) -> float:
    """Submit in batches (``POST /processes/schedule``), as a job array would be."""

    async def submit(first: int) -> None:
        await client.schedule_processes(
            [
                {"upid": f"t{i}", "definition_id": "true", "restart_mode": "NEVER"}
                for i in range(first, min(first + batch, count))
            ]
        )

    start, wall_start = time.perf_counter(), time.time()
    await asyncio.gather(*(submit(first) for first in range(0, count, batch)))
    submitted = time.perf_counter() - start
    # The queue is served in order: once the last one has ended, at most a few are left.
    # A long poll, rather than a dump every few milliseconds that would cost the
    # dispatcher as much CPU as the launches it measures.
    await client.wait_process(f"t{count - 1}", ["EXITED"], timeout=600)
    while True:
        done = (await client.dump())["processes"]["by_state"].get("800-EXITED", 0)
        if done >= count:
            break
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - start
    print(f"  corral: {count} submitted in {submitted:.2f} s, all EXITED after {elapsed:.2f} s")
    # While the batch is taken in, launching shares the CPU with it: the rate once it is in.
    starts = sorted(p["started_at"] for p in await client.describe_processes() if p["started_at"])
    tenth, ninth = starts[len(starts) // 10], starts[len(starts) * 9 // 10]
    steady = (len(starts) * 8 // 10) / (ninth - tenth)
    print(f"  corral: {steady:.0f}/s from 10 % to 90 % started, the first 10 % after")
    print(f"          {tenth - wall_start:.2f} s (the dispatcher takes in the batch meanwhile)")
    return count / elapsed


async def latencies(client: AsyncClient, count: int) -> list[float]:
    out = []
    for i in range(count):
        start = time.perf_counter()
        await client.schedule_process(f"lat{i}", "sleeper", restart_mode="NEVER")
        await client.wait_process(f"lat{i}", ["RUNNING"], timeout=30)
        out.append((time.perf_counter() - start) * 1000)
        await client.terminate_process(f"lat{i}")
    return out


async def restart_after_kill(client: AsyncClient, tries: int) -> list[float]:
    out = []
    # healthy after 0.2 s, so each kill below hits a healthy service (restarted at once)
    await client.schedule_process(
        "svc",
        "sleeper",
        restart_mode="ALWAYS",
        configuration={"corral": {"restart": {"healthy_after": 0.2}}},
    )
    record = await client.wait_process("svc", ["RUNNING"], timeout=30)
    for _ in range(tries):
        await asyncio.sleep(0.3)
        start = time.perf_counter()
        os.kill(record["pid"], signal.SIGKILL)
        round_ = record["round"]
        while True:
            record = await client.wait_process("svc", ["RUNNING"], timeout=30)
            if record["round"] > round_:
                break
            await asyncio.sleep(0.001)
        out.append((time.perf_counter() - start) * 1000)
    await client.terminate_process("svc")
    return out


async def run(args: argparse.Namespace) -> None:
    slots = 2 * cores()
    served = Served(
        f"[[engines]]\nid = 'default'\nslots = {slots}\nbase_need = 1\nmaximum_vms = 1\n"
        # processes run as whoever runs the benchmark, root included: the launcher's fast
        # path (posix_spawn), which a run_as engine would leave for a fork
        "allow_root = true\n",
        serve_args=("--tls",) if args.tls else (),
    )
    try:
        served.wait_nodes()
        async with AsyncClient(served.url, served.token, ca=served.ca) as client:
            await client.create_definition("true", "exec", {"exec": "/bin/true"})
            await client.create_definition(
                "sleeper", "exec", {"exec": "/bin/sleep", "argv": ["600"]}
            )
            over = "HTTPS and TLS" if args.tls else "HTTP and TCP"
            print(
                f"throughput: {args.processes} x /bin/true, one node with {slots} slots,"
                f" over {over}"
            )
            corral = await corral_rate(client, args.processes, args.batch)
            plain = plain_spawn_rate(args.processes)
            print(
                f"  corral {corral:.0f}/s   plain subprocess (2 at a time) {plain:.0f}/s   "
                f"ratio {corral / plain:.2f}"
            )
            lat = await latencies(client, args.latency)
            print(
                f"submit→RUNNING over {args.latency} sequential: p50 {pct(lat, 0.5):.1f} ms  "
                f"p99 {pct(lat, 0.99):.1f} ms  max {max(lat):.1f} ms"
            )
            restarts = await restart_after_kill(client, args.restarts)
            print(
                f"SIGKILLed service RUNNING again: median {statistics.median(restarts):.1f} ms  "
                f"max {max(restarts):.1f} ms over {len(restarts)}"
            )
            print(f"dispatcher RSS after the run: {served.rss_kib() / 1024:.1f} MiB")
    finally:
        served.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=100, help="processes per request")
    parser.add_argument("--latency", type=int, default=200)
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument("--tls", action="store_true", help="serve the API and agents over TLS")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
