"""A computation's worker process: ``python -m corral.compute``.

The dispatcher starts it as an ordinary process; the ``compute`` key of its configuration
names the client's address, the computation, the secret, the pulse interval and, for TLS, the
client's certificate. It dials the client, proves the secret (``corral.compute.auth``), takes
the components (files into a working directory of its own, modules imported from there, then
code) and runs tasks:

- CPU-bound tasks one at a time, on a thread with an event loop of its own, so that pulses
  and messages keep flowing while a task computes;
- I/O-bound tasks (``io=True``) concurrently on the connection's loop.

A lost connection is dialled again for five pulses while tasks go on and their results wait;
then the worker gives up, cancels its tasks and exits 0, which releases its slot. A client
that says ``Close`` ends it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral import eventloop
from corral.compute import code as codec
from corral.compute.auth import ComputeConnection, new_hello, pinned_context, prove_worker
from corral.compute.errors import AuthenticationFailed, RemoteError
from corral.compute.handles import Location, MailboxHandle, TaskHandle, register_endpoint
from corral.compute.messages import (
    COMPUTE_MESSAGES,
    Cancel,
    Close,
    Code,
    ComputeMessage,
    Done,
    Pulse,
    Ready,
    Run,
    Setup,
    ToMailbox,
    ToTask,
)
from corral.wire.codec import ConnectionClosed, FramedConnection, ProtocolError

log = logging.getLogger("corral.compute.worker")

#: pulses missed before the peer counts as gone
MISSED_PULSES = 5
#: exit code when the client cannot prove the secret (not worth a restart)
EXIT_REFUSED = 3
EXIT_USAGE = 2
#: results and messages kept while the client is unreachable
BACKLOG_LIMIT = 100_000


@dataclass(frozen=True)
class WorkerSettings:
    host: str
    port: int
    computation: str
    secret: str
    worker: str
    pulse_interval: float
    certificate: str | None = None
    connect_timeout: float = 30.0

    @classmethod
    def from_configuration(cls, configuration: Mapping[str, Any], worker: str) -> WorkerSettings:
        """Read the ``compute`` section; raises ValueError naming a missing or wrong key."""
        section = configuration.get("compute")
        if not isinstance(section, Mapping):
            raise ValueError("configuration.compute is missing")
        try:
            host, _, port = str(section["address"]).rpartition(":")
            return cls(
                host=host.strip("[]"),
                port=int(port),
                computation=str(section["computation"]),
                secret=str(section["secret"]),
                worker=worker,
                pulse_interval=float(section["pulse_interval"]),
                certificate=section.get("certificate"),
            )
        except KeyError as exc:
            raise ValueError(f"configuration.compute.{exc.args[0]} is missing") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"configuration.compute: {exc}") from None


class _Mailbox:
    """Messages for one task; filled from any thread, read on the task's own loop."""

    __slots__ = ("_items", "_lock", "_waiter")

    def __init__(self) -> None:
        self._items: deque[bytes] = deque()
        self._lock = threading.Lock()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, blob: bytes) -> None:
        with self._lock:
            self._items.append(blob)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.get_loop().call_soon_threadsafe(_wake, waiter)

    async def get(self) -> bytes:
        while True:
            with self._lock:
                if self._items:
                    return self._items.popleft()
                waiter = self._waiter = asyncio.get_running_loop().create_future()
            await waiter


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class TaskContext:
    """What a task function gets as its ``task`` argument: its mailbox and handles."""

    __slots__ = ("_mailbox", "_shipped", "client", "handle", "id", "location")

    def __init__(
        self,
        run: Run,
        location: Location,
        computation: str,
        mailbox: _Mailbox,
        shipped: codec.Shipped,
    ) -> None:
        self.id = run.task
        self.location = location
        self.handle = TaskHandle(computation, run.task)
        #: the client's default mailbox: ``await task.client.send(message)``
        self.client = MailboxHandle(computation, 0)
        self._mailbox = mailbox
        self._shipped = shipped

    async def receive(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109 - discoro's API
        """The next message sent to this task, or None after ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                blob = await self._mailbox.get()
        except TimeoutError:
            return None
        return self._shipped.loads(blob)


class _Task:
    __slots__ = ("cancelled", "future", "mailbox", "run")

    def __init__(self, run: Run) -> None:
        self.run = run
        self.mailbox = _Mailbox()
        self.future: asyncio.Task[None] | None = None
        self.cancelled = False


class _Outbox:
    """Messages made on the CPU thread, handed to the connection's loop once per batch."""

    def __init__(self, loop: asyncio.AbstractEventLoop, flush: Callable[[list[Any]], None]):
        self._loop = loop
        self._flush = flush
        self._lock = threading.Lock()
        self._items: list[Any] = []

    def put(self, message: Any) -> None:
        with self._lock:
            self._items.append(message)
            first = len(self._items) == 1
        if first:
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        self._flush(items)


class _CpuRunner:
    """Runs CPU-bound tasks one at a time on a thread with an event loop of its own."""

    def __init__(self, execute: Callable[[_Task], Any]) -> None:
        self._execute = execute
        self._queue: deque[_Task] = deque()
        self.loop = (eventloop.loop_factory() or asyncio.new_event_loop)()
        self._wake = asyncio.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        async def serve() -> None:
            while not self._stopping:
                await self._wake.wait()
                self._wake.clear()
                while self._queue and not self._stopping:
                    task = self._queue.popleft()
                    if not task.cancelled:
                        task.future = asyncio.ensure_future(self._execute(task))
                        with contextlib.suppress(asyncio.CancelledError):
                            await task.future

        try:
            self.loop.run_until_complete(serve())
        finally:
            self.loop.close()

    def submit(self, tasks: Iterable[_Task]) -> None:
        self._queue.extend(tasks)
        self.loop.call_soon_threadsafe(self._poke)

    def _poke(self) -> None:
        self._wake.set()

    def cancel(self, task: _Task) -> None:
        task.cancelled = True
        self.loop.call_soon_threadsafe(_cancel_future, task)

    def stop(self) -> None:
        self._stopping = True
        for task in self._queue:
            task.cancelled = True
        self.loop.call_soon_threadsafe(self._poke)
        self._thread.join(5)


def _cancel_future(task: _Task) -> None:
    if task.future is not None:
        task.future.cancel()


class Worker:
    """One worker process of one computation."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.location = Location(socket.gethostname(), settings.worker)
        self._shipped = codec.Shipped()
        self._codes: dict[int, Any] = {}
        self._wants_task: dict[int, bool] = {}
        self._tasks: dict[int, _Task] = {}
        self._conn: ComputeConnection | None = None
        self._backlog: list[ComputeMessage] = []
        self._last_heard = time.monotonic()
        self._workdir = Path(tempfile.mkdtemp(prefix=f"corral-compute-{settings.computation}-"))
        self._loop = asyncio.get_running_loop()
        self._net_thread = threading.get_ident()
        self._outbox = _Outbox(self._loop, self._send_all)
        self._runner = _CpuRunner(self._execute)
        register_endpoint(settings.computation, self)

    # --- the endpoint for handles unpickled here ----------------------------------------------

    def post_task(self, task: int, message: Any) -> None:
        self._emit(ToTask(task, codec.dumps(message)))

    def post_mailbox(self, mailbox: int, message: Any) -> None:
        self._emit(ToMailbox(mailbox, codec.dumps(message)))

    def task_handle(self, task: int) -> TaskHandle:
        return TaskHandle(self.settings.computation, task)

    def _emit(self, message: ComputeMessage) -> None:
        if threading.get_ident() == self._net_thread:
            self._send(message)
        else:
            self._outbox.put(message)

    def _send(self, message: ComputeMessage) -> None:
        conn = self._conn
        if conn is not None and not conn.closed:
            if isinstance(message, Done):
                # only now: a task whose result waits in the backlog is still the worker's
                # when it tells a client it dials again what it runs (Ready.running)
                self._tasks.pop(message.task, None)
            conn.send(message)
        elif len(self._backlog) < BACKLOG_LIMIT:
            self._backlog.append(message)

    def _send_all(self, messages: list[Any]) -> None:
        for message in messages:
            self._send(message)

    # --- the connection ------------------------------------------------------------------------

    async def run(self) -> int:
        os.chdir(self._workdir)
        sys.path.insert(0, str(self._workdir))
        try:
            deadline = time.monotonic() + self.settings.connect_timeout
            while (conn := await self._dial(deadline)) is not None:
                if await self._serve(conn):
                    break
                # from now, not from when the client was last heard: a worker that was
                # stopped or cut off still tries, and a live client takes it back
                deadline = time.monotonic() + MISSED_PULSES * self.settings.pulse_interval
        except AuthenticationFailed as exc:
            log.error("%s", exc.message)
            return EXIT_REFUSED
        finally:
            self._shut_down()
        return 0

    async def _dial(self, deadline: float) -> ComputeConnection | None:
        settings = self.settings
        tls = pinned_context(settings.certificate) if settings.certificate else None
        pause = min(0.05, settings.pulse_interval)
        while True:
            try:
                async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                    reader, writer = await asyncio.open_connection(
                        settings.host, settings.port, ssl=tls
                    )
                conn = FramedConnection(reader, writer, COMPUTE_MESSAGES)
                _no_delay(writer)
                return conn
            except (OSError, TimeoutError) as exc:
                if time.monotonic() + pause >= deadline:
                    log.warning("giving up on the client at %s: %s", settings.host, exc)
                    return None
                await asyncio.sleep(pause)
                pause = min(pause * 2, settings.pulse_interval)

    async def _serve(self, conn: ComputeConnection) -> bool:
        """Serve one connection; True when the client closed the computation."""
        settings = self.settings
        hello = new_hello(settings.computation, settings.worker, self.location.node)
        pulses: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(MISSED_PULSES * settings.pulse_interval + 5):
                await prove_worker(conn, settings.secret, hello)
                setup = await conn.read_batch()
            if not setup or not isinstance(setup[0], Setup):
                raise ProtocolError("expected Setup after the proofs")
            self._apply_setup(setup[0])
            self._last_heard = time.monotonic()
            self._conn = conn
            conn.send(Ready(sorted(self._tasks)))
            backlog, self._backlog = self._backlog, []
            self._send_all(backlog)
            pulses = asyncio.ensure_future(self._pulse(conn))
            return await self._obey(conn, setup[1:])
        except (ConnectionClosed, ProtocolError, TimeoutError) as exc:
            log.warning("connection to the client lost: %s", exc)
            return False
        finally:
            if pulses is not None:
                pulses.cancel()
            self._conn = None
            conn.close()

    async def _obey(self, conn: ComputeConnection, batch: list[ComputeMessage]) -> bool:
        while True:
            cpu: list[_Task] = []
            for message in batch:
                if isinstance(message, Run):
                    task = self._start(message)
                    if task is not None:
                        cpu.append(task)
                elif isinstance(message, ToTask):
                    self._deliver(message)
                elif isinstance(message, Code):
                    self._add_codes(message.blob)
                elif isinstance(message, Cancel):
                    self._cancel(message.task)
                elif isinstance(message, Close):
                    return True
            if cpu:
                self._runner.submit(cpu)
            batch = await conn.read_batch()
            self._last_heard = time.monotonic()

    async def _pulse(self, conn: ComputeConnection) -> None:
        interval = self.settings.pulse_interval
        while True:
            await asyncio.sleep(interval)
            if time.monotonic() - self._last_heard > MISSED_PULSES * interval:
                log.warning("the client has been silent for %d pulses", MISSED_PULSES)
                conn.close()
                return
            conn.send(Pulse(time.time()))

    # --- components and tasks ------------------------------------------------------------------

    def _apply_setup(self, setup: Setup) -> None:
        self.location = Location(setup.node, self.settings.worker)
        for file in setup.files:
            name = Path(file.name).name  # never outside the working directory
            (self._workdir / name).write_bytes(file.data)
        for module in setup.modules:
            __import__(module)
        self._add_codes(setup.blob)

    def _add_codes(self, blob: bytes) -> None:
        for code_id, obj in self._shipped.loads(blob).items():
            self._shipped.add(obj)
            self._codes[code_id] = obj
            self._wants_task[code_id] = codec.accepts_task(obj)

    def _start(self, run: Run) -> _Task | None:
        task = _Task(run)
        self._tasks[run.task] = task
        if run.io:
            task.future = self._loop.create_task(self._execute(task))
            return None
        return task

    def _deliver(self, message: ToTask) -> None:
        task = self._tasks.get(message.task)
        if task is not None:
            task.mailbox.put(message.payload)

    def _cancel(self, task_id: int) -> None:
        task = self._tasks.pop(task_id, None)
        if task is None:
            return
        if task.run.io:
            task.cancelled = True
            _cancel_future(task)
        else:
            self._runner.cancel(task)

    async def _execute(self, task: _Task) -> None:
        run = task.run
        try:
            func = self._codes[run.code]
            args, kwargs = self._shipped.loads(run.call)
            if self._wants_task.get(run.code):
                kwargs["task"] = TaskContext(
                    run, self.location, self.settings.computation, task.mailbox, self._shipped
                )
            result = func(*args, **kwargs)
            if asyncio.iscoroutine(result):
                result = await result
            done = Done(run.task, True, codec.dumps(result), "")
        except asyncio.CancelledError:
            return
        except BaseException as exc:  # a task's failure, whatever it is, is its result
            done = Done(run.task, False, _dump_exception(exc), traceback.format_exc())
        if not task.cancelled:
            self._emit(done)

    def _shut_down(self) -> None:
        self._runner.stop()
        for task in list(self._tasks.values()):
            if task.run.io:
                _cancel_future(task)
        self._tasks.clear()
        os.chdir(self._workdir.parent)
        shutil.rmtree(self._workdir, ignore_errors=True)


def _dump_exception(exc: BaseException) -> bytes:
    try:
        blob = codec.dumps(exc)
        codec.loads(blob)  # an exception whose constructor cannot take its args back
    except Exception:
        return codec.dumps(RemoteError(f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    return blob


def _no_delay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        configuration = json.loads(os.environ.get("CORRAL_CONFIGURATION", "{}"))
        settings = WorkerSettings.from_configuration(
            configuration, os.environ.get("CORRAL_UPID", f"worker-{os.getpid()}")
        )
    except ValueError as exc:
        print(f"corral compute worker: {exc}", file=sys.stderr)
        return EXIT_USAGE

    async def work() -> int:
        return await Worker(settings).run()

    return eventloop.run(work())
