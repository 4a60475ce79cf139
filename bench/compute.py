"""Remote tasks: corral.compute against Ray and Dask, 2 worker processes each, in one run.

For each system: the time from nothing to a ready computation with 2 workers, then N no-op
tasks submitted and then awaited (tasks/s), then M sequential submit-then-await calls
(round-trip p50/p99). corral's ready time is given twice: on a running dispatcher, and with
the dispatcher started too (Ray's ``init`` starts its whole cluster). Ray and Dask come with
the ``bench`` extra (``pip install -e '.[bench]'``); a missing one is skipped.

    python bench/compute.py [--tasks 10000] [--calls 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from _serve import Served

from corral import AsyncClient
from corral.compute import Computation

CONFIG = """
[[engines]]
id = "default"
allow_root = true  # the tests may run as root
slots = 2
base_need = 1
maximum_vms = 1
"""
WARM_UP = 200


def noop(x: Any) -> Any:
    return x


@dataclass
class Figures:
    name: str
    ready_s: float
    tasks_per_s: float
    p50_ms: float
    p99_ms: float


def percentiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49], cuts[98]


def measure(
    name: str,
    ready_s: float,
    many: Callable[[int], None],
    one: Callable[[int], None],
    tasks: int,
    calls: int,
) -> Figures:
    many(WARM_UP)
    start = time.perf_counter()
    many(tasks)
    rate = tasks / (time.perf_counter() - start)
    samples = []
    for i in range(calls):
        start = time.perf_counter()
        one(i)
        samples.append((time.perf_counter() - start) * 1000)
    p50, p99 = percentiles(samples)
    return Figures(name, ready_s, rate, p50, p99)


async def corral_figures(served: Served, tasks: int, calls: int) -> Figures:
    async with AsyncClient(served.url, served.token) as dispatcher:
        start = time.perf_counter()
        computation = Computation([noop], dispatcher=dispatcher)
        await computation.schedule(workers=2)
        ready = time.perf_counter() - start
        async with computation:

            async def many(n: int) -> None:
                submitted = [await computation.run(noop, i) for i in range(n)]
                for rtask in submitted:
                    await rtask.result()

            await many(WARM_UP)
            begin = time.perf_counter()
            await many(tasks)
            rate = tasks / (time.perf_counter() - begin)
            samples = []
            for i in range(calls):
                begin = time.perf_counter()
                await (await computation.run(noop, i)).result()
                samples.append((time.perf_counter() - begin) * 1000)
        p50, p99 = percentiles(samples)
        return Figures("corral", ready, rate, p50, p99)


def ray_figures(tasks: int, calls: int) -> Figures | None:
    try:
        import ray
    except ImportError:
        print("  ray is not installed: pip install -e '.[bench]'")
        return None
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    remote = ray.remote(noop)
    ray.get([remote.remote(i) for i in range(2)])  # its 2 workers are up
    ready = time.perf_counter() - start
    try:
        return measure(
            "ray",
            ready,
            lambda n: ray.get([remote.remote(i) for i in range(n)]),
            lambda i: ray.get(remote.remote(i)),
            tasks,
            calls,
        )
    finally:
        ray.shutdown()


def dask_figures(tasks: int, calls: int) -> Figures | None:
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        print("  dask.distributed is not installed: pip install -e '.[bench]'")
        return None
    start = time.perf_counter()
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = Client(cluster)
    client.gather(client.map(noop, range(2), pure=False))
    ready = time.perf_counter() - start
    try:
        return measure(
            "dask",
            ready,
            lambda n: client.gather(client.map(noop, range(n), pure=False)),
            lambda i: client.submit(noop, i, pure=False).result(),
            tasks,
            calls,
        )
    finally:
        client.close()
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=1_000)
    args = parser.parse_args()

    start = time.perf_counter()
    served = Served(CONFIG)
    try:
        served.wait_nodes(1)
        cold = time.perf_counter() - start
        ours = asyncio.run(corral_figures(served, args.tasks, args.calls))
    finally:
        served.stop()
    print(f"corral: dispatcher with its node up in {cold:.2f} s")
    results = [ours]
    for baseline in (ray_figures, dask_figures):
        found = baseline(args.tasks, args.calls)
        if found is not None:
            results.append(found)

    print(f"\n{args.tasks} no-op tasks submitted then awaited; {args.calls} sequential calls")
    print(f"{'system':8} {'ready s':>8} {'tasks/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for f in results:
        print(f"{f.name:8} {f.ready_s:8.2f} {f.tasks_per_s:9.0f} {f.p50_ms:8.3f} {f.p99_ms:8.3f}")
    print(f"corral ready including its dispatcher: {cold + ours.ready_s:.2f} s")
    for other in results[1:]:
        print(
            f"corral / {other.name}: tasks/s ×{ours.tasks_per_s / other.tasks_per_s:.1f}, "
            f"p50 ×{ours.p50_ms / other.p50_ms:.2f}, p99 ×{ours.p99_ms / other.p99_ms:.2f}, "
            f"ready ×{ours.ready_s / other.ready_s:.2f}"
        )


if __name__ == "__main__":
    main()
