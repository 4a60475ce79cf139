"""One client's computation on a worker process: its code, its tasks and its connection.

A worker of its own computation has one session, kept across reconnections; a worker of a
shared pool has one per client. A session outlives its connection: tasks go on while the
client is away, and results wait in a backlog until it dials (or is dialled) again.
"""

from __future__ import annotations

import asyncio
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Protocol

from corral.compute import code as codec
from corral.compute.auth import ComputeConnection
from corral.compute.errors import RemoteError
from corral.compute.handles import Location, MailboxHandle, TaskHandle, register_endpoint
from corral.compute.messages import (
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
from corral.wire.codec import ProtocolError

#: pulses missed before the peer counts as gone
MISSED_PULSES: Final = 5
#: results and messages kept while the client is unreachable
BACKLOG_LIMIT: Final = 100_000


class Host(Protocol):
    """What a session needs of its worker process."""

    loop: asyncio.AbstractEventLoop

    def run_cpu(self, tasks: list[Task]) -> None: ...

    def cancel_cpu(self, task: Task) -> None: ...

    def from_thread(self, session: Session, message: ComputeMessage) -> None: ...


class Mailbox:
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

    __slots__ = ("_mailbox", "_shipped", "client", "directory", "handle", "id", "location")

    def __init__(self, task: Task, session: Session) -> None:
        self.id = task.run.task
        self.location = session.location
        #: this task's handle, to give to others
        self.handle = TaskHandle(session.computation, task.run.task)
        #: the client's mailbox: ``await task.client.send(message)``
        self.client = MailboxHandle(session.computation, 0)
        #: where the computation's files are (the working directory of CPU-bound tasks)
        self.directory = session.directory
        self._mailbox = task.mailbox
        self._shipped = session.shipped

    async def receive(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109 - discoro's API
        """The next message sent to this task, or None after ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                blob = await self._mailbox.get()
        except TimeoutError:
            return None
        return self._shipped.loads(blob)


class Task:
    __slots__ = ("cancelled", "future", "mailbox", "run", "session")

    def __init__(self, run: Run, session: Session) -> None:
        self.run = run
        self.session = session
        self.mailbox = Mailbox()
        self.future: asyncio.Future[None] | None = None
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        if self.future is not None:
            self.future.cancel()


class Session:
    """One computation on this worker process."""

    def __init__(self, host: Host, worker: str, directory: Path) -> None:
        self.host = host
        self.computation = ""
        self.location = Location("", worker)
        self.directory = directory
        self.shipped = codec.Shipped()
        self.pulse_interval = 1.0
        self.last_heard = time.monotonic()
        self._codes: dict[int, Any] = {}
        self._wants_task: dict[int, bool] = {}
        self._tasks: dict[int, Task] = {}
        self._conn: ComputeConnection | None = None
        self._backlog: list[ComputeMessage] = []
        self._net_thread = threading.get_ident()

    @property
    def connected(self) -> bool:
        return self._conn is not None

    # --- the endpoint for handles unpickled here ----------------------------------------------

    def post_task(self, task: int, message: Any) -> None:
        self.emit(ToTask(task, codec.dumps(message)))

    def post_mailbox(self, mailbox: int, message: Any) -> None:
        self.emit(ToMailbox(mailbox, codec.dumps(message)))

    def task_handle(self, task: int) -> TaskHandle:
        return TaskHandle(self.computation, task)

    def emit(self, message: ComputeMessage) -> None:
        """Send from any thread: the connection is used on its own loop only."""
        if threading.get_ident() == self._net_thread:
            self.send(message)
        else:
            self.host.from_thread(self, message)

    def send(self, message: ComputeMessage) -> None:
        conn = self._conn
        if conn is not None and not conn.closed:
            if isinstance(message, Done):
                # only now: a task whose result waits in the backlog is still the session's
                # when it tells a client that comes back what it runs (Ready.running)
                self._tasks.pop(message.task, None)
            conn.send(message)
        elif len(self._backlog) < BACKLOG_LIMIT:
            self._backlog.append(message)

    # --- the connection ------------------------------------------------------------------------

    async def serve(self, conn: ComputeConnection, setup: Setup, rest: list[Any]) -> bool:
        """Serve an authenticated connection; True when the client closed the computation."""
        self.apply(setup)
        self._conn = conn
        self.last_heard = time.monotonic()
        conn.send(Ready(sorted(self._tasks)))
        backlog, self._backlog = self._backlog, []
        for message in backlog:
            self.send(message)
        pulses = asyncio.ensure_future(self._pulse(conn))
        try:
            return await self._obey(conn, rest)
        finally:
            pulses.cancel()
            self._conn = None
            conn.close()

    async def _obey(self, conn: ComputeConnection, batch: list[Any]) -> bool:
        while True:
            cpu: list[Task] = []
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
                elif not isinstance(message, Pulse):
                    raise ProtocolError(f"unexpected {type(message).__name__} from the client")
            if cpu:
                self.host.run_cpu(cpu)
            batch = await conn.read_batch()
            self.last_heard = time.monotonic()

    async def _pulse(self, conn: ComputeConnection) -> None:
        interval = self.pulse_interval
        while True:
            await asyncio.sleep(interval)
            if time.monotonic() - self.last_heard > MISSED_PULSES * interval:
                conn.close()  # the client is gone: the read loop ends with ConnectionClosed
                return
            conn.send(Pulse(time.time()))

    # --- components and tasks ------------------------------------------------------------------

    def apply(self, setup: Setup) -> None:
        self.computation = setup.computation
        self.location = Location(setup.node, self.location.process)
        self.pulse_interval = setup.pulse_interval
        register_endpoint(setup.computation, self)
        self.directory.mkdir(parents=True, exist_ok=True)
        for file in setup.files:
            name = Path(file.name).name  # never outside the working directory
            (self.directory / name).write_bytes(file.data)
        for module in setup.modules:
            __import__(module)
        self._add_codes(setup.blob)

    def _add_codes(self, blob: bytes) -> None:
        for code_id, obj in self.shipped.loads(blob).items():
            self.shipped.add(obj)
            self._codes[code_id] = obj
            self._wants_task[code_id] = codec.accepts_task(obj)

    def _start(self, run: Run) -> Task | None:
        task = Task(run, self)
        self._tasks[run.task] = task
        if run.io:
            task.future = self.host.loop.create_task(self.execute(task))
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
            task.cancel()
        else:
            self.host.cancel_cpu(task)

    async def execute(self, task: Task) -> None:
        run = task.run
        try:
            func = self._codes[run.code]
            args, kwargs = self.shipped.loads(run.call)
            if self._wants_task.get(run.code):
                kwargs["task"] = TaskContext(task, self)
            result = func(*args, **kwargs)
            if asyncio.iscoroutine(result):
                result = await result
            done = Done(run.task, True, codec.dumps(result), "")
        except asyncio.CancelledError:
            return
        except BaseException as exc:  # a task's failure, whatever it is, is its result
            done = Done(run.task, False, _dump_exception(exc), traceback.format_exc())
        if not task.cancelled:
            self.emit(done)

    def end(self, on_cpu: Callable[[Task], None]) -> None:
        """Cancel every task (CPU-bound ones through ``on_cpu``)."""
        for task in self._tasks.values():
            if task.run.io:
                task.cancel()
            else:
                on_cpu(task)
        self._tasks.clear()
        self._backlog.clear()


def _dump_exception(exc: BaseException) -> bytes:
    try:
        blob = codec.dumps(exc)
        codec.loads(blob)  # an exception whose constructor cannot take its args back
    except Exception:
        return codec.dumps(RemoteError(f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    return blob
