"""Soak: 100,000 processes through the dispatcher on the fake driver over 10 minutes, with faults.

Starts ``corral serve`` with one fake engine whose simulated cloud misbehaves (nodes die,
creates fail, processes crash) and submits N processes at a steady rate over the given
duration: most run once (restart NEVER), some are services of a kind that restart on a
crash (ABNORMAL), some fail. Every 10 s it prints the dispatcher's resident memory and the
processes by state. Once all have ended it keeps sampling memory for a while, to show that
it does not grow when the work is done.

At the end it reports throughput (processes ended per second, against the rate offered),
submit→RUNNING latency from the records (``started_at - created_at`` of first rounds; both
stamps come from this machine's clock), and the count of processes lost (acknowledged but
missing, or never ended) and duplicated (a round started more than once: more starts than
rounds). Both must be 0.

    python bench/soak.py [--processes 100000] [--duration 600] [--nodes 20] [--slots 64]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from typing import Any

from _serve import Served, pct

from corral import AsyncClient

TERMINAL = {"700-TERMINATED", "800-EXITED", "850-FAILED", "900-REJECTED"}
SAMPLE_EVERY = 10.0
#: the simulated cloud's misbehaviour: deaths are per node and second
FAULTS = (
    "boot_delay = 0.5, node_death_rate = 0.001, crash_rate = 0.02, "
    "create_error_rate = 0.05, seed = 7"
)


def config(nodes: int, slots: int) -> str:
    return f"""
[[engines]]
id = "sim"
driver = "fake"
slots = {slots}
base_need = {nodes}
maximum_vms = {nodes + 5}
idle_timeout = 30.0
heartbeat_period = 1.0
driver_options = {{ {FAULTS} }}
"""


def kinds(rng: random.Random, upid: str) -> dict[str, Any]:
    draw = rng.random()
    if draw < 0.7:
        return {"upid": upid, "definition_id": "short", "restart_mode": "NEVER"}
    if draw < 0.9:
        return {
            "upid": upid,
            "definition_id": "longer",
            "restart_mode": "ABNORMAL",
            "configuration": {"corral": {"restart": {"backoff_initial": 0.1, "max_attempts": 5}}},
        }
    return {"upid": upid, "definition_id": "fails", "restart_mode": "NEVER"}


class Sampler:
    """Dispatcher memory and state counts every SAMPLE_EVERY seconds."""

    def __init__(self, served: Served, client: AsyncClient) -> None:
        self.served = served
        self.client = client
        self.start = time.perf_counter()
        self.rss: list[tuple[float, float]] = []

    async def run(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(SAMPLE_EVERY)

    async def sample(self) -> dict[str, int]:
        at = time.perf_counter() - self.start
        rss = self.served.rss_kib() / 1024
        self.rss.append((at, rss))
        by_state: dict[str, int] = (await self.client.dump())["processes"]["by_state"]
        states = " ".join(f"{k.split('-')[1]}={v}" for k, v in sorted(by_state.items()))
        print(f"  t={at:6.0f}s  RSS {rss:7.1f} MiB  {states}", flush=True)
        return by_state


async def submit(client: AsyncClient, count: int, duration: float, batch: int) -> float:
    rng = random.Random(1)
    start = time.perf_counter()
    batches = (count + batch - 1) // batch
    for b in range(batches):
        due = start + duration * b / batches
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        first = b * batch
        await client.schedule_processes(
            [kinds(rng, f"s{i:06d}") for i in range(first, min(first + batch, count))]
        )
    return time.perf_counter() - start


async def run(args: argparse.Namespace) -> None:
    served = Served(config(args.nodes, args.slots))
    try:
        served.wait_nodes(args.nodes, timeout=120)
        async with AsyncClient(served.url, served.token, timeout=300) as client:
            for name, argv in (("short", ["1"]), ("longer", ["3"])):
                await client.create_definition(name, "exec", {"exec": "/bin/sleep", "argv": argv})
            await client.create_definition("fails", "exec", {"exec": "/bin/false"})
            offered = args.processes / args.duration
            print(
                f"soak: {args.processes:,} processes over {args.duration:.0f} s "
                f"({offered:.0f}/s offered) on {args.nodes} fake nodes x {args.slots} slots"
            )
            sampler = Sampler(served, client)
            sampling = asyncio.create_task(sampler.run())
            start = time.perf_counter()
            submitted_in = await submit(client, args.processes, args.duration, args.batch)
            while True:
                by_state = (await client.dump())["processes"]["by_state"]
                if sum(by_state.get(s, 0) for s in TERMINAL) >= args.processes:
                    break
                if time.perf_counter() - start > args.duration + args.drain:
                    print("  gave up waiting for every process to end")
                    break
                await asyncio.sleep(1.0)
            done_in = time.perf_counter() - start
            at_done = served.rss_kib() / 1024
            await asyncio.sleep(args.settle)
            sampling.cancel()
            after = served.rss_kib() / 1024
            records = await client.describe_processes()
        report(args, records, submitted_in, done_in, offered, sampler.rss, at_done, after)
    finally:
        served.stop()


def report(
    args: argparse.Namespace,
    records: list[dict[str, Any]],
    submitted_in: float,
    done_in: float,
    offered: float,
    rss: list[tuple[float, float]],
    at_done: float,
    after: float,
) -> None:
    by_upid = {r["upid"]: r for r in records}
    expected = {f"s{i:06d}" for i in range(args.processes)}
    lost = [u for u in expected if u not in by_upid or by_upid[u]["state"] not in TERMINAL]
    duplicated = [r["upid"] for r in records if r["starts"] > r["round"]]
    latencies = [
        (r["started_at"] - r["created_at"]) * 1000
        for r in records
        if r["round"] == 1 and r["started_at"] is not None
    ]
    throughput = args.processes / done_in
    peak = max(m for _, m in rss) if rss else at_done
    print(f"submitted in {submitted_in:.0f} s; every process ended after {done_in:.0f} s")
    print(
        f"  throughput {throughput:.0f} ended/s against {offered:.0f}/s offered "
        f"(ratio {throughput / offered:.2f})"
    )
    print(
        f"  submit→RUNNING over {len(latencies):,} first rounds: "
        f"p50 {statistics.median(latencies):.1f} ms  p99 {pct(latencies, 0.99):.1f} ms"
    )
    print(
        f"  dispatcher RSS: peak {peak:.1f} MiB, when the work was done {at_done:.1f} MiB, "
        f"{args.settle:.0f} s later {after:.1f} MiB (growth after the work "
        f"{after - at_done:+.1f} MiB)"
    )
    ends: dict[str, int] = {}
    for record in records:
        ends[record["state"]] = ends.get(record["state"], 0) + 1
    print(f"  ends: {dict(sorted(ends.items()))}")
    print(f"  lost {len(lost)}  duplicated {len(duplicated)}  (both must be 0)")
    if lost or duplicated:
        print(f"  lost: {lost[:20]}  duplicated: {duplicated[:20]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=100_000)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of submitting")
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--drain", type=float, default=300.0, help="seconds allowed to finish")
    parser.add_argument("--settle", type=float, default=60.0, help="memory watch after")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
