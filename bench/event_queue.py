"""The shared event queue: corral's (durable) against a BaseManager queue and a Redis list.

20,000 small events, 1 producer, 2 consumer processes, the same work through each queue in one
run: events per second from the producer's first put to the last event handled, and the
ratio to the BaseManager-hosted ``queue.Queue`` the DRP framework uses (target: ≥ 2×).
corral's queue commits every put, take and acknowledgement to SQLite (synchronous=FULL)
before it answers. Redis (the ``bench`` extra and a ``redis-server`` on the PATH) is skipped
when missing.

    python bench/event_queue.py [--events 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import queue as stdlib_queue
import shutil
import socket
import subprocess
import tempfile
import time
from multiprocessing.managers import BaseManager
from pathlib import Path
from typing import Any

from corral.pipeline.config import FrameworkConfig
from corral.pipeline.queue_host import QueueHost, queue_secret
from corral.queue import QueueClient

CONSUMERS = 2
BATCH = 100  # events per put of the producers that can batch (corral, Redis)
TAKE = 64  # events per take of corral's consumers
STOP = "stop"


def event(i: int) -> dict[str, Any]:
    return {"name": "next_file", "args": {"i": i, "path": f"/data/f{i}.fits"}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- corral ------------------------------------------------------------------------------------


def corral_host(config: FrameworkConfig, ready: Any, stop: Any) -> None:
    host = QueueHost(config)
    host.start()
    ready.set()
    stop.wait()
    host.stop()


def corral_consumer(address: tuple[str, int], secret: str, ready: Any, done: Any) -> None:
    async def consume() -> int:
        client = QueueClient(*address, secret)
        await client.connect()
        ready.set()
        count, acking = 0, None
        while True:
            events = await client.take("bench", limit=TAKE, wait=5)
            if acking is not None:
                await acking
            acking = asyncio.ensure_future(client.ack([e.id for e in events]))
            count += sum(e.name != STOP for e in events)
            if any(e.name == STOP for e in events):
                await acking
                await client.aclose()
                return count

    done.put(asyncio.run(consume()))


async def corral_produce(address: tuple[str, int], secret: str, count: int) -> None:
    client = QueueClient(*address, secret)
    await client.connect()
    puts = [
        client.put(
            "bench",
            [("next_file", event(i)["args"], False) for i in range(n, min(n + BATCH, count))],
        )
        for n in range(0, count, BATCH)
    ]
    await asyncio.gather(*puts)
    await client.put("bench", [(STOP, {}, False)] * CONSUMERS)
    await client.aclose()


def corral_rate(count: int, state: Path) -> float:
    config = FrameworkConfig(queue_manager_portnr=free_port(), state_dir=str(state))
    ready, stop = mp.Event(), mp.Event()
    host = mp.Process(target=corral_host, args=(config, ready, stop))
    host.start()
    ready.wait(30)
    secret = queue_secret(config, create=False)
    assert secret is not None
    address = (config.queue_manager_hostname, config.queue_manager_portnr)
    return _race(
        lambda r, d: mp.Process(target=corral_consumer, args=(address, secret, r, d)),
        lambda: asyncio.run(corral_produce(address, secret, count)),
        count,
        cleanup=lambda: (stop.set(), host.join(30)),
    )


# --- BaseManager -------------------------------------------------------------------------------

_shared: stdlib_queue.Queue[Any] = stdlib_queue.Queue()


def _get_queue() -> stdlib_queue.Queue[Any]:
    return _shared


class _Manager(BaseManager):
    pass


_Manager.register("get_queue", callable=_get_queue)


def manager_consumer(address: Any, ready: Any, done: Any) -> None:
    client = _Manager(address=address, authkey=b"bench")
    client.connect()
    events = client.get_queue()  # type: ignore[attr-defined]
    ready.set()
    count = 0
    while events.get()["name"] != STOP:
        count += 1
    done.put(count)


def manager_rate(count: int) -> float:
    server = _Manager(address=("127.0.0.1", 0), authkey=b"bench")
    server.start()
    producer = _Manager(address=server.address, authkey=b"bench")
    producer.connect()
    events = producer.get_queue()  # type: ignore[attr-defined]

    def produce() -> None:
        for i in range(count):
            events.put(event(i))
        for _ in range(CONSUMERS):
            events.put({"name": STOP})

    return _race(
        lambda r, d: mp.Process(target=manager_consumer, args=(server.address, r, d)),
        produce,
        count,
        cleanup=server.shutdown,
    )


# --- Redis -------------------------------------------------------------------------------------


def redis_consumer(port: int, ready: Any, done: Any) -> None:
    import json

    import redis

    client = redis.Redis(port=port)
    ready.set()
    count = 0
    while True:
        _, raw = client.brpop(["bench"])
        if json.loads(raw)["name"] == STOP:
            done.put(count)
            return
        count += 1


def redis_rate(count: int, state: Path) -> float | None:
    try:
        import json

        import redis
    except ImportError:
        print("  redis (python) is not installed: pip install -e '.[bench]'")
        return None
    if shutil.which("redis-server") is None:
        print("  redis-server is not on the PATH: skipped")
        return None
    port = free_port()
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(state),
        ],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)

    def produce() -> None:
        for n in range(0, count, BATCH):
            client.lpush("bench", *(json.dumps(event(i)) for i in range(n, min(n + BATCH, count))))
        client.lpush("bench", *[json.dumps({"name": STOP})] * CONSUMERS)

    def stop() -> None:
        server.terminate()
        server.wait(10)

    return _race(
        lambda r, d: mp.Process(target=redis_consumer, args=(port, r, d)), produce, count, stop
    )


# --- the race ----------------------------------------------------------------------------------


def _race(make_consumer: Any, produce: Any, count: int, cleanup: Any) -> float:
    done: Any = mp.Queue()
    readies = [mp.Event() for _ in range(CONSUMERS)]
    consumers = [make_consumer(ready, done) for ready in readies]
    try:
        for consumer in consumers:
            consumer.start()
        for ready in readies:
            ready.wait(30)
        start = time.perf_counter()
        produce()
        handled = sum(done.get(timeout=120) for _ in consumers)
        elapsed = time.perf_counter() - start
        for consumer in consumers:
            consumer.join(30)
        if handled != count:
            raise AssertionError(f"{handled} events handled, {count} put")
        return count / elapsed
    finally:
        cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="corral-bench-queue-"))
    try:
        rates = {"BaseManager": manager_rate(args.events)}
        rates["corral (durable)"] = corral_rate(args.events, state)
        found = redis_rate(args.events, state)
        if found is not None:
            rates["Redis list"] = found
    finally:
        shutil.rmtree(state, ignore_errors=True)
    print(f"{args.events} events, 1 producer, {CONSUMERS} consumer processes")
    for name, rate in rates.items():
        print(f"  {name:18} {rate:9.0f} events/s")
    base = rates["BaseManager"]
    print(f"corral / BaseManager: ×{rates['corral (durable)'] / base:.2f} (target ≥ 2)")
    if "Redis list" in rates:
        print(f"corral / Redis list: ×{rates['corral (durable)'] / rates['Redis list']:.2f}")


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
