"""Computations on real worker processes started by a real dispatcher.

The task functions live in this module, which the workers cannot import: they travel by
value, as a user's script would. Ports of discoro's two example programs come first.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import Corral
from corral import AsyncClient
from corral.compute import (
    Computation,
    ComputationClosed,
    RemoteError,
    Status,
    StatusMessage,
    TaskAbandoned,
    task,
)

pytestmark = pytest.mark.anyio

PULSE = 0.2


# --- discoro's examples, ported ---------------------------------------------------------------


class Item:
    """A class of the client's, shipped as a component; its instances travel as plain pickles."""

    def __init__(self, i: int, n: int) -> None:
        self.i, self.n = i, n


@task(io=True)  # it waits for the client: let the others run meanwhile
async def echo_square(item: Item, client: Any, task: Any = None) -> str:
    """Runs on every process: reports to the client, then waits for the client's word."""
    await client.send(("square", item.i, item.n * item.n, str(task.location)))
    word = await task.receive(timeout=10)
    return f"{item.i}:{word}"


async def test_a_computation_on_every_process_exchanges_messages(dispatcher: AsyncClient) -> None:
    async with Computation([echo_square, Item], dispatcher=dispatcher, pulse_interval=PULSE) as c:
        assert await c.schedule(workers=3) == 0
        procs = await c.procs()
        assert len(procs) == 3
        tasks = await c.run_procs(echo_square, Item(0, 5), c.mailbox)
        tasks += [
            await c.run_at(loc, echo_square, Item(i, i + 5), c.mailbox)
            for i, loc in enumerate(procs, start=1)
        ]
        reports = [await c.receive(timeout=10) for _ in tasks]
        assert sorted(r[2] for r in reports) == sorted([25, 25, 25, 36, 49, 64])
        assert {r[3] for r in reports} == {str(loc) for loc in procs}
        for rtask in tasks:
            await rtask.send("go")
        results = [await t.result(timeout=10) for t in tasks]
        assert results == ["0:go", "0:go", "0:go", "1:go", "2:go", "3:go"]
        assert [t.location for t in tasks[3:]] == procs


def collatz_steps(n: int) -> int:
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


async def test_results_are_collected_from_many_tasks(dispatcher: AsyncClient) -> None:
    async with Computation([collatz_steps], dispatcher=dispatcher, pulse_interval=PULSE) as c:
        await c.schedule(workers=2)
        assert await c.map(collatz_steps, range(1, 501), window=8) == [
            collatz_steps(n) for n in range(1, 501)
        ]
        many = [await c.run(collatz_steps, n) for n in range(1000, 1100)]
        assert [await t.result() for t in many] == [collatz_steps(n) for n in range(1000, 1100)]
        assert {t.location for t in many} == set(await c.procs())  # spread over both
        assert await c.run_result(collatz_steps, 27) == 111


# --- placement, components, kinds of tasks ----------------------------------------------------


def where_am_i() -> tuple[str, int]:
    return os.environ["CORRAL_UPID"], os.getpid()


async def test_without_a_count_one_process_per_slot_of_each_node(
    module_corral: Corral, dispatcher: AsyncClient
) -> None:
    (node,) = module_corral.ready_nodes()
    async with Computation(dispatcher=dispatcher, pulse_interval=PULSE) as c:
        await c.schedule()
        procs = await c.procs()
        assert len(procs) == node["slots"]
        assert await c.nodes() == [node["node_id"]]
        assert {p.node for p in procs} == {node["node_id"]}
        on_node = await c.run_node_procs(node["node_id"], where_am_i)
        seen = [await t.result() for t in on_node]
        assert sorted(upid for upid, _ in seen) == sorted(p.process for p in procs)
        records = {r["upid"]: r for r in await dispatcher.describe_processes()}
        assert all(records[p.process]["state"] == "500-RUNNING" for p in procs)
        assert [t.location for t in await c.run_nodes(where_am_i)] != []
        assert (await c.run_at(node["node_id"], where_am_i)).location in procs
    records = {r["upid"]: r for r in await dispatcher.describe_processes()}
    assert all(records[p.process]["state"] in ("700-TERMINATED", "800-EXITED") for p in procs)


def read_shipped(name: str) -> str:
    return Path(name).read_text()


def use_module() -> int:
    import shipped_helper  # type: ignore[import-not-found]  # shipped as a component

    return int(shipped_helper.triple(14))


async def test_files_and_modules_reach_the_working_directory(
    dispatcher: AsyncClient, tmp_path: Path
) -> None:
    data = tmp_path / "data.txt"
    data.write_text("shipped once")
    module = tmp_path / "shipped_helper.py"
    module.write_text("def triple(x):\n    return 3 * x\n")
    components = [str(data), module, read_shipped]
    async with Computation(components, dispatcher=dispatcher, pulse_interval=PULSE) as c:
        await c.schedule(workers=1)
        assert await c.run_result(read_shipped, "data.txt") == "shipped once"
        assert await c.run_result(use_module) == 42


def test_a_file_above_the_size_limit_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 2048)
    with pytest.raises(ValueError, match=r"big.bin has 2048 bytes, above max_file_size 1024"):
        Computation([big], max_file_size=1024)


def busy(seconds: float) -> tuple[float, float]:
    start = time.monotonic()
    time.sleep(seconds)  # holds the process, as a CPU-bound task does
    return start, time.monotonic()


@task(io=True)
async def waits(seconds: float) -> tuple[float, float]:
    start = time.monotonic()
    await asyncio.sleep(seconds)
    return start, time.monotonic()


async def test_cpu_bound_tasks_run_one_at_a_time_and_io_tasks_together(
    dispatcher: AsyncClient,
) -> None:
    async with Computation(dispatcher=dispatcher, pulse_interval=PULSE) as c:
        await c.schedule(workers=1)
        (proc,) = await c.procs()
        cpu = [await c.run_at(proc, busy, 0.3) for _ in range(3)]
        spans = sorted([await t.result() for t in cpu])
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
        io = [await c.run_at(proc, waits, 0.5) for _ in range(4)]
        spans = [await t.result() for t in io]
        assert max(s[0] for s in spans) < min(s[1] for s in spans)  # all were waiting at once
        # pulses flow while a CPU-bound task holds the process for many pulse intervals
        start, end = await (await c.run_at(proc, busy, 8 * PULSE)).result()
        assert end - start >= 8 * PULSE
        assert [m for m in await c.procs()] == [proc]


async def relay(peer: Any, task: Any = None) -> Any:
    """Sends its own handle to a peer task, then returns what the peer answers."""
    await peer.send(("reply to", task.handle))
    return await task.receive(timeout=10)


async def answer(task: Any = None) -> str:
    kind, sender = await task.receive(timeout=10)
    await sender.send(f"{kind} from task {task.id}")
    return "answered"


async def test_tasks_talk_to_each_other_by_handle(dispatcher: AsyncClient) -> None:
    async with Computation(dispatcher=dispatcher, pulse_interval=PULSE) as c:
        await c.schedule(workers=2)
        first, second = await c.procs()
        answering = await c.run_at(second, answer)
        asking = await c.run_at(first, relay, answering)
        assert await asking.result(timeout=10) == f"reply to from task {answering.task}"
        assert await answering.result(timeout=10) == "answered"


class Unpicklable(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(a + b)


def fails(kind: str) -> None:
    if kind == "plain":
        raise KeyError("no such key")
    raise Unpicklable(1, 2)


async def test_a_remote_exception_comes_back_with_its_traceback(dispatcher: AsyncClient) -> None:
    async with Computation(dispatcher=dispatcher, pulse_interval=PULSE) as c:
        await c.schedule(workers=1)
        with pytest.raises(KeyError, match="no such key") as caught:
            await c.run_result(fails, "plain")
        assert "remote traceback" in caught.value.__notes__[0]
        assert "in fails\nKeyError: 'no such key'" in caught.value.__notes__[0]
        with pytest.raises(RemoteError, match="Unpicklable: 3"):
            await c.run_result(fails, "other")


# --- status messages and faults ---------------------------------------------------------------


def sleep_then(seconds: float, value: Any) -> Any:
    time.sleep(seconds)
    return value


@task(retryable=True)
def sleep_then_retryable(seconds: float, value: Any) -> Any:
    time.sleep(seconds)
    return value


class Recorder:
    def __init__(self) -> None:
        self.messages: list[StatusMessage] = []
        self.changed = asyncio.Event()

    async def __call__(self, message: StatusMessage) -> None:
        self.messages.append(message)
        self.changed.set()

    def of(self, status: Status) -> list[StatusMessage]:
        return [m for m in self.messages if m.status is status]

    async def wait_for(self, status: Status, count: int = 1) -> None:
        async with asyncio.timeout(15):
            while len(self.of(status)) < count:
                self.changed.clear()
                await self.changed.wait()


async def test_every_status_message_and_a_worker_killed_mid_task(
    dispatcher: AsyncClient,
) -> None:
    status = Recorder()
    c = Computation(status=status, dispatcher=dispatcher, pulse_interval=PULSE)
    async with c:
        await c.schedule(workers=2)
        first, second = await c.procs()
        for kind in (Status.NODE_DISCOVERED, Status.NODE_INITIALIZED):
            assert [m.info for m in status.of(kind)] == [first.node]
        assert {m.info for m in status.of(Status.PROCESS_DISCOVERED)} == {first, second}
        assert {m.info for m in status.of(Status.PROCESS_INITIALIZED)} == {first, second}

        ok = await c.run_at(first, sleep_then, 0, "fine")
        assert await ok.result() == "fine"
        with pytest.raises(KeyError):
            await c.run_result(fails, "plain")
        await status.wait_for(Status.TASK_FAILED)
        failed = status.of(Status.TASK_FAILED)[0]
        assert isinstance(failed.error, KeyError)
        assert "no such key" in failed.traceback
        assert any(m.info is ok and m.result == "fine" for m in status.of(Status.TASK_FINISHED))

        _, second_pid = await (await c.run_at(second, where_am_i)).result()
        doomed = await c.run_at(second, sleep_then, 30, "never")
        retried = await c.run_at(second, sleep_then_retryable, 0.5, "again")
        await asyncio.sleep(0.3)  # both are on the worker, the first one running
        os.kill(second_pid, signal.SIGKILL)
        with pytest.raises(TaskAbandoned, match=f"process {second} "):
            await doomed.result(timeout=15)
        assert await retried.result(timeout=15) == "again"
        assert retried.location == first  # run again on the process left
        await status.wait_for(Status.TASK_ABANDONED)
        assert status.of(Status.TASK_ABANDONED)[0].info is doomed
        assert [m.info for m in status.of(Status.PROCESS_DISCONNECTED)] == [second]
        created = {m.info for m in status.of(Status.TASK_CREATED)}
        assert {ok, doomed, retried} <= created
    # closing closes every process left, and their node
    assert first in [m.info for m in status.of(Status.PROCESS_CLOSED)]
    assert status.of(Status.NODE_CLOSED)[-1].info == first.node


async def test_a_silent_process_is_closed_and_usable_again_when_it_comes_back(
    dispatcher: AsyncClient,
) -> None:
    status = Recorder()
    async with Computation(status=status, dispatcher=dispatcher, pulse_interval=PULSE) as c:
        await c.schedule(workers=1)
        (proc,) = await c.procs()
        _, pid = await (await c.run(where_am_i)).result()
        stuck = await c.run(sleep_then, 0.2, "late")
        os.kill(pid, signal.SIGSTOP)
        try:
            await status.wait_for(Status.PROCESS_CLOSED)
            assert [m.info for m in status.of(Status.NODE_CLOSED)] == [proc.node]
            with pytest.raises(TaskAbandoned, match="silent for 5 pulses"):
                await stuck.result()
            assert await c.procs() == []
        finally:
            os.kill(pid, signal.SIGCONT)
        await status.wait_for(Status.PROCESS_INITIALIZED, count=2)
        assert await c.procs() == [proc]
        assert await c.run_result(where_am_i) == (proc.process, pid)  # the same process


async def test_a_killed_worker_restarted_by_the_dispatcher_is_used_again(
    dispatcher: AsyncClient,
) -> None:
    status = Recorder()
    async with Computation(status=status, dispatcher=dispatcher, pulse_interval=PULSE) as c:
        await c.schedule(workers=1)
        (proc,) = await c.procs()
        _, pid = await (await c.run(where_am_i)).result()
        os.kill(pid, signal.SIGKILL)
        await status.wait_for(Status.NODE_DISCONNECTED)
        assert [m.info for m in status.of(Status.PROCESS_DISCONNECTED)] == [proc]
        await status.wait_for(Status.PROCESS_INITIALIZED, count=2)  # restarted (ABNORMAL)
        upid, new_pid = await c.run_result(where_am_i)
        assert (upid, new_pid != pid) == (proc.process, True)


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=corral-test",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_workers_reach_their_client_over_tls(dispatcher: AsyncClient, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    async with Computation(
        dispatcher=dispatcher, pulse_interval=PULSE, certfile=str(cert), keyfile=str(key)
    ) as c:
        await c.schedule(workers=1)
        assert await c.run_result(sum, [20, 22]) == 42
        (proc,) = await c.procs()
        conn = c._processes[proc.process].conn
        assert conn is not None
        assert conn.get_extra_info("ssl_object") is not None


async def test_a_shared_pool_serves_several_computations_and_outlives_them(
    dispatcher: AsyncClient,
) -> None:
    pool = f"p{os.getpid()}"
    first = Computation(dispatcher=dispatcher, pulse_interval=PULSE)
    second = Computation([Item], dispatcher=dispatcher, pulse_interval=PULSE)
    await first.schedule(workers=2, exclusive=False, pool=pool)
    await second.schedule(workers=2, exclusive=False, pool=pool)
    try:
        assert set(await first.procs()) == set(await second.procs())
        assert {p.process for p in await first.procs()} == {
            f"corral-pool-{pool}-w0",
            f"corral-pool-{pool}-w1",
        }
        waiting = await first.run(waits, 0.5)  # holds nothing: the second computation goes on
        seen_by_first = {await t.result() for t in await first.run_procs(where_am_i)}
        seen_by_second = {await t.result() for t in await second.run_procs(where_am_i)}
        assert seen_by_first == seen_by_second  # the very same processes
        assert not waiting.done()
        await first.close()
        with pytest.raises(ComputationClosed):
            await waiting.result()
        assert await second.run_result(sum, [1, 2]) == 3  # the pool outlived the first
        third = Computation(dispatcher=dispatcher, pulse_interval=PULSE)
        await third.schedule(workers=3, exclusive=False, pool=pool)  # the pool grows by one
        assert len(await third.procs()) == 3
        await third.close()
    finally:
        await second.close()
    records = {r["upid"]: r for r in await dispatcher.describe_processes()}
    pool_states = {u: r["state"] for u, r in records.items() if u.startswith(f"corral-pool-{pool}")}
    assert pool_states == dict.fromkeys(
        (f"corral-pool-{pool}-w{i}" for i in range(3)), "500-RUNNING"
    )
    for upid in pool_states:
        await dispatcher.terminate_process(upid)


async def test_closing_fails_pending_tasks_and_ends_the_workers(dispatcher: AsyncClient) -> None:
    c = Computation(dispatcher=dispatcher, pulse_interval=PULSE)
    await c.schedule(workers=1)
    (proc,) = await c.procs()
    pending = await c.run(sleep_then, 30, None)
    await c.close()
    with pytest.raises(ComputationClosed):
        await pending.result()
    with pytest.raises(ComputationClosed):
        await c.run(sleep_then, 0, None)

    async def ended() -> bool:
        record = await dispatcher.describe_process(proc.process)
        return record["state"] in ("700-TERMINATED", "800-EXITED")

    await wait_for(ended)


async def wait_for(probe: Any) -> None:
    for _ in range(300):
        if await probe():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{probe.__name__} still false after 15 s")
