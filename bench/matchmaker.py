"""The pure decisions at scale: the matchmaker and the planner on 1,000,000 queued processes
and 10,000 nodes.

Builds a snapshot (every process just arrived, so each is placed or given a reason; a
tenth of them carry a constraint, a few a node_exclusive tag) and times one ``match`` and
one ``plan`` over it, twice: on busy nodes with few free slots (most processes get a
waiting reason), and on empty nodes with a slot for everyone (every process is placed).
Prints placements and decisions per second against the 100,000/s target, and the memory
one queued process costs the snapshot.

    python bench/matchmaker.py [--processes 1000000] [--nodes 10000] [--slots 16]
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc

from corral.core.matchmaker import match
from corral.core.model import Engine
from corral.core.node_states import NodeState
from corral.core.planner import PoolNode, plan
from corral.core.snapshot import EngineView, NodeView, Pending, Snapshot
from corral.testing import engine, node_view, pending

TARGET = 100_000


def build_queue(count: int) -> dict[str, Pending]:
    queue = {}
    zones = [{"zone": z} for z in ("a", "b", "c", "d")]
    for i in range(count):
        upid = f"p{i}"
        if i % 10 == 0:
            queue[upid] = pending(upid, constraints=zones[i % 4])
        elif i % 1000 == 1:
            queue[upid] = pending(upid, node_exclusive=f"tag{i % 7}")
        else:
            queue[upid] = pending(upid)
    return queue


def build_nodes(count: int, slots: int, used: bool = True) -> list[NodeView]:
    return [
        node_view(
            f"n{i}",
            slots=slots,
            used=i % slots if used else 0,
            properties={"zone": "abcd"[i % 4]},
        )
        for i in range(count)
    ]


def run_match(queue: dict[str, Pending], nodes: list[NodeView], label: str) -> float:
    free = sum(max(n.slots - n.used, 0) for n in nodes)
    snapshot = Snapshot(
        (EngineView(engine().engine_id, maximum_vms=len(nodes)),),
        tuple(nodes),
        queue.values(),
        queue.values(),
    )
    gc.disable()  # a collection in the middle would time the collector, not the matchmaker
    start = time.perf_counter()
    result = match(snapshot)
    took = time.perf_counter() - start
    gc.enable()
    placed = len(result.placements)
    print(
        f"match, {label} ({free:,} free slots): {placed:,} placed, "
        f"{len(result.waiting):,} given a reason, {len(result.rejected):,} rejected "
        f"in {took:.2f} s"
    )
    print(
        f"  {placed / took:,.0f} placements/s (target {TARGET:,}/s, ratio "
        f"{placed / took / TARGET:.2f}); {len(queue) / took:,.0f} processes decided/s"
    )
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=1_000_000)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--slots", type=int, default=16)
    args = parser.parse_args()

    gc.collect()
    tracemalloc.start()
    queue = build_queue(args.processes)
    queue_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    print(f"snapshot: {len(queue):,} queued processes, {args.nodes:,} nodes")
    print(f"  memory per queued process (Pending + queue entry): {queue_bytes / len(queue):.0f} B")
    busy = build_nodes(args.nodes, args.slots)
    run_match(queue, busy, f"{args.slots} slots per node, partly used")
    roomy = -(-args.processes // args.nodes)
    run_match(queue, build_nodes(args.nodes, roomy, used=False), f"{roomy} free slots per node")

    engines: tuple[Engine, ...] = (engine(slots=args.slots, maximum_vms=2 * args.nodes),)
    pool = [
        PoolNode(n.node_id, n.engine, NodeState.BUSY, n.used, created_at=float(i))
        for i, n in enumerate(busy)
    ]
    start = time.perf_counter()
    decided = plan(engines, pool, queue.values())
    took = time.perf_counter() - start
    print(
        f"plan: boot {sum(decided.boot.values()):,} node(s), retire {len(decided.retire)}, "
        f"in {took:.2f} s ({len(queue) / took:,.0f} queued processes/s)"
    )


if __name__ == "__main__":
    main()
