"""The client side of a computation: ``Computation`` and the ``RemoteTask`` handles it returns.

A computation listens on a port of its own (loopback unless told otherwise), asks the
dispatcher for worker processes (ordinary dispatched processes, so they show in ``corral
process list``), and lets them dial in with the computation's secret. Tasks go to the
least-loaded process in batched frames and their results come back the same way; nothing
of the traffic passes through the dispatcher. Pulses flow both ways: a process silent for
five pulses (or disconnected for that long) is closed, its retryable tasks run again
elsewhere and the others fail with ``TaskAbandoned``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from corral.client import AsyncClient
from corral.compute import code as codec
from corral.compute.auth import ComputeConnection
from corral.compute.errors import (
    ComputationClosed,
    ComputeError,
    RemoteError,
    TaskAbandoned,
)
from corral.compute.handles import Location, MailboxHandle, TaskHandle, register_endpoint
from corral.compute.messages import (
    COMPUTE_MESSAGES,
    PROTOCOL_VERSION,
    Cancel,
    Close,
    Code,
    Done,
    Pulse,
    Ready,
    Run,
    Setup,
    ToMailbox,
    ToTask,
)
from corral.compute.placement import least_loaded
from corral.compute.processes import ProcessState, WorkerProcess
from corral.compute.reservation import Reservation
from corral.compute.session import MISSED_PULSES
from corral.compute.status import Status, StatusCallback, StatusFeed, StatusMessage
from corral.compute.tasks import RemoteTask, TaskOptions
from corral.errors import WaitTimeout
from corral.tls import server_context
from corral.wire.codec import ConnectionClosed, FramedConnection, ProtocolError
from corral.wire.handshake import AuthenticationFailed, answer_hello, new_secret

log = logging.getLogger("corral.compute")

MSG_TIMEOUT: Final = 10.0
PULSE_INTERVAL: Final = 2.0


class Computation:
    """A distributed computation: components shipped once, tasks run on worker processes.

    ``components`` are functions, coroutine functions, classes, modules (one source file) or
    file paths; ``status`` is a callback or coroutine function that receives
    ``StatusMessage``\\ s; ``dispatcher`` is an ``AsyncClient`` (default: one from
    ``CORRAL_URL``/``CORRAL_TOKEN``/``CORRAL_HOME``). Workers dial ``listen`` (loopback by
    default; give the address nodes reach this client at when they are other hosts), over TLS
    when ``certfile`` is given.
    """

    def __init__(
        self,
        components: Iterable[Any] = (),
        status: StatusCallback | None = None,
        timeout: float = MSG_TIMEOUT,
        pulse_interval: float = PULSE_INTERVAL,
        dispatcher: AsyncClient | None = None,
        *,
        listen: str = "127.0.0.1",
        certfile: str | None = None,
        keyfile: str | None = None,
        max_file_size: int = codec.DEFAULT_MAX_FILE_SIZE,
        python: str | None = None,
    ) -> None:
        if pulse_interval <= 0:
            raise ValueError("pulse_interval must be above 0")
        self.id = f"c{uuid.uuid4().hex[:12]}"
        self.timeout = timeout
        self.pulse_interval = pulse_interval
        self.components = list(components)
        self._files, self._modules = codec.component_files(self.components, max_file_size)
        self._code = codec.CodeTable(c for c in self.components if codec.is_code(c))
        self._status = StatusFeed(status)
        self._dispatcher = dispatcher
        self._own_dispatcher = dispatcher is None
        self._workers: Reservation | None = None
        #: the shared pool whose workers this computation uses, if it does not have its own
        self._pool: str | None = None
        self._listen = listen
        self._certfile, self._keyfile = certfile, keyfile
        self._python = python or sys.executable
        self._secret = new_secret()
        self._server: asyncio.Server | None = None
        self._address = ""
        self._processes: dict[str, WorkerProcess] = {}
        self._tasks: dict[int, RemoteTask] = {}
        self._orphans: list[RemoteTask] = []
        self._mailboxes: dict[int, asyncio.Queue[bytes]] = {0: asyncio.Queue()}
        self._next_task = itertools.count(1)
        self._background: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Event()
        self._closed = False
        self.mailbox = MailboxHandle(self.id, 0)
        register_endpoint(self.id, self)

    # --- scheduling worker processes -----------------------------------------------------------

    async def schedule(
        self,
        workers: int | None = None,
        *,
        engine: str | None = None,
        constraints: dict[str, Any] | None = None,
        exclusive: bool = True,
        pool: str = "default",
        pool_listen: str = "127.0.0.1",
        wait: bool = True,
        timeout: float = 60.0,  # noqa: ASYNC109 - a deadline for the whole reservation
    ) -> int:
        """Reserve worker processes and return 0 once they are ready (``wait``).

        Without ``workers``, one process per slot of every node of ``engine`` (default: any)
        that satisfies ``constraints``, each on its node; with it, that many processes
        wherever the dispatcher places them.

        ``exclusive`` (discoro's way): the processes are this computation's own, and end with
        it. Otherwise the computation shares the worker processes of the pool named ``pool``
        with the other computations that use it, starting what the pool lacks (its workers
        listen on ``pool_listen``); they outlive the computation.
        """
        if self._closed:
            raise ComputationClosed(f"computation {self.id} is closed")
        if self._processes and exclusive != (self._pool is None):
            raise ComputeError(f"computation {self.id} already uses other worker processes")
        reservation = self._reservation()
        deadline = time.monotonic() + timeout
        if exclusive:
            await self._start_server()
            upids = await reservation.request(
                workers, engine, constraints or {}, self._worker_configuration()
            )
        else:
            self._start_background()
            self._pool = pool
            self._secret, upids = await reservation.join_pool(
                pool, workers, engine, constraints or {}, pool_listen
            )
            for upid in upids:
                self._spawn(self._dial(upid, deadline))
        if wait:
            await self._wait_ready(upids, deadline)
        return 0

    def _worker_configuration(self) -> dict[str, Any]:
        section: dict[str, Any] = {
            "address": self._address,
            "computation": self.id,
            "secret": self._secret,
            "pulse_interval": self.pulse_interval,
        }
        if self._certfile is not None:
            section["certificate"] = Path(self._certfile).read_text()
        # a worker refused by this client will be refused again: do not restart it forever
        return {"compute": section, "corral": {"restart": {"max_attempts": 3}}}

    async def _wait_ready(self, upids: list[str], deadline: float) -> None:
        while not all(self._is_ready(upid) for upid in upids):
            left = deadline - time.monotonic()
            if left <= 0:
                waiting = [u for u in upids if not self._is_ready(u)]
                why = await self._reservation().why_waiting(waiting[0])
                raise WaitTimeout(
                    f"{len(waiting)} of {len(upids)} worker processes are not ready "
                    f"in time; {waiting[0]}: {why}"
                )
            self._changed.clear()
            try:
                async with asyncio.timeout(min(left, 1.0)):
                    await self._changed.wait()
            except TimeoutError:
                pass

    def _is_ready(self, upid: str) -> bool:
        process = self._processes.get(upid)
        return process is not None and process.state is ProcessState.READY

    def _reservation(self) -> Reservation:
        if self._workers is None:
            if self._dispatcher is None:
                self._dispatcher = AsyncClient()
            self._workers = Reservation(self._dispatcher, self.id, self._python)
        return self._workers

    # --- running tasks -------------------------------------------------------------------------

    async def run_at(
        self, where: str | Location, func: Any, *args: Any, **kwargs: Any
    ) -> RemoteTask:
        """Run at a process (a ``Location``) or at the least-loaded process of a node (its id)."""
        return self._submit(self._pick(where), func, args, kwargs)

    async def run_each(
        self, where: Iterable[str | Location], func: Any, *args: Any, **kwargs: Any
    ) -> list[RemoteTask]:
        """Run at each of the given nodes (ids) or processes (``Location``\\ s)."""
        return [self._submit(self._pick(w), func, args, kwargs) for w in where]

    async def run(self, func: Any, *args: Any, **kwargs: Any) -> RemoteTask:
        """Run at the least-loaded process of the least-loaded node."""
        return self._submit(self._pick(None), func, args, kwargs)

    async def run_nodes(self, func: Any, *args: Any, **kwargs: Any) -> list[RemoteTask]:
        """Run once on every node, at its least-loaded process."""
        return [self._submit(self._pick(node), func, args, kwargs) for node in self._node_ids()]

    async def run_procs(self, func: Any, *args: Any, **kwargs: Any) -> list[RemoteTask]:
        """Run once on every process."""
        return [self._submit(p, func, args, kwargs) for p in self._ready()]

    async def run_node_procs(
        self, node: str, func: Any, *args: Any, **kwargs: Any
    ) -> list[RemoteTask]:
        """Run once on every process of ``node``."""
        return [self._submit(p, func, args, kwargs) for p in self._ready() if p.node == node]

    async def run_result(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        """Run at the least-loaded process and return the result."""
        return await (await self.run(func, *args, **kwargs)).result()

    async def map(self, func: Any, iterable: Iterable[Any], window: int = 64) -> list[Any]:
        """``func(item)`` for every item, in order, keeping every process busy with at most
        ``window`` tasks in flight each."""
        tasks: list[RemoteTask] = []
        room = asyncio.Semaphore(max(1, window * max(1, len(self._ready()))))
        for item in iterable:
            await room.acquire()
            task = await self.run(func, item)
            task.add_done_callback(lambda _: room.release())
            tasks.append(task)
        return [await t.result() for t in tasks]

    async def nodes(self) -> list[str]:
        """The ids of the nodes with a ready process."""
        return self._node_ids()

    async def procs(self) -> list[Location]:
        """The locations of the ready processes."""
        return [p.location for p in self._ready()]

    async def receive(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109 - discoro's API
        """The next message tasks sent to ``self.mailbox``, or None after ``timeout`` s."""
        try:
            async with asyncio.timeout(timeout):
                blob = await self._mailboxes[0].get()
        except TimeoutError:
            return None
        return codec.loads(blob)

    def _ready(self) -> list[WorkerProcess]:
        return [p for p in self._processes.values() if p.state is ProcessState.READY]

    def _node_ids(self) -> list[str]:
        return list(dict.fromkeys(p.node for p in self._ready()))

    def _pick(self, where: str | Location | None) -> WorkerProcess:
        if self._closed:
            raise ComputationClosed(f"computation {self.id} is closed")
        if isinstance(where, Location):
            process = self._processes.get(where.process)
            if process is None or process.state is not ProcessState.READY:
                raise ComputeError(f"process {where} is not ready in computation {self.id}")
            return process
        chosen = least_loaded(self._ready(), where)
        if chosen is None:
            place = "no process is ready" if where is None else f"no process is ready on {where}"
            raise ComputeError(f"{place} in computation {self.id}: await schedule() first")
        return chosen

    def _submit(
        self, process: WorkerProcess, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> RemoteTask:
        if not callable(func):
            raise TypeError(f"a task must be a function, not {type(func).__name__}")
        options = getattr(func, "__corral_task__", None) or TaskOptions()
        run = Run(
            next(self._next_task), self._code.id_of(func), codec.dumps((args, kwargs)), options.io
        )
        remote = RemoteTask(self.id, run, options)
        self._tasks[run.task] = remote
        self._send_run(process, remote)
        return remote

    def _send_run(self, process: WorkerProcess, remote: RemoteTask) -> None:
        code_id = remote.run.code
        if code_id not in process.codes:
            process.send(Code(self._code.blob(code_id)))
            process.codes.add(code_id)
        remote.process, remote.location = process, process.location
        process.tasks[remote.task] = remote
        process.send(remote.run)
        self._emit(Status.TASK_CREATED, remote)

    # --- the endpoint for handles unpickled here ----------------------------------------------

    def post_task(self, task: int, message: Any) -> None:
        remote = self._tasks.get(task)
        if remote is not None and remote.process is not None:
            remote.process.send(ToTask(task, codec.dumps(message)))

    def post_mailbox(self, mailbox: int, message: Any) -> None:
        self._mailboxes[mailbox].put_nowait(codec.dumps(message))

    def task_handle(self, task: int) -> TaskHandle:
        return self._tasks.get(task) or TaskHandle(self.id, task)

    # --- worker connections --------------------------------------------------------------------

    async def _start_server(self) -> None:
        if self._server is not None:
            return
        tls = (
            server_context(Path(self._certfile), Path(self._keyfile) if self._keyfile else None)
            if self._certfile
            else None
        )
        self._server = await asyncio.start_server(self._accept, self._listen, 0, ssl=tls)
        port = self._server.sockets[0].getsockname()[1]
        self._address = f"{self._listen}:{port}"
        self._start_background()

    def _start_background(self) -> None:
        if self._background:
            return
        self._spawn(self._pulse())
        if self._status.wanted:
            self._spawn(self._status.deliver())

    async def _dial(self, upid: str, deadline: float) -> None:
        """Keep a connection to a worker of the shared pool, dialling it again when it drops
        (it may have been restarted elsewhere), until it ends or the computation does."""
        reservation = self._reservation()
        while not self._closed:
            try:
                host, port = await reservation.address_of(upid, deadline)
                reader, writer = await asyncio.open_connection(host, port)
            except (OSError, ComputeError, WaitTimeout) as exc:
                if not reservation.lives(upid):
                    log.warning("pool worker %s is gone: %s", upid, exc)
                    return
                await asyncio.sleep(self.pulse_interval)
                continue
            await self._handle(FramedConnection(reader, writer, COMPUTE_MESSAGES))
            deadline = time.monotonic() + MISSED_PULSES * self.pulse_interval
            await asyncio.sleep(min(0.05, self.pulse_interval))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._handle(FramedConnection(reader, writer, COMPUTE_MESSAGES))

    async def _handle(self, conn: ComputeConnection) -> None:
        """Serve a connection to a worker, whichever side dialled, until it ends."""
        try:
            async with asyncio.timeout(self.timeout):
                realm = self._pool or self.id
                hello = await answer_hello(conn, self._secret, realm, PROTOCOL_VERSION)
        except (AuthenticationFailed, ProtocolError, ConnectionClosed, TimeoutError) as exc:
            log.warning("refused a worker from %s: %s", conn.peer, exc)
            await conn.aclose()
            return
        process = await self._attach(hello.peer, conn)
        try:
            await self._serve(process, conn)
        except (ConnectionClosed, ProtocolError) as exc:
            log.info("worker %s disconnected: %s", process.location, exc)
        finally:
            conn.close()
            if process.conn is conn and process.move(ProcessState.DISCONNECTED):
                process.conn = None
                self._emit(Status.PROCESS_DISCONNECTED, process.location)
                if not any(p.node == process.node and p.conn for p in self._processes.values()):
                    self._emit(Status.NODE_DISCONNECTED, process.node)

    async def _attach(self, upid: str, conn: ComputeConnection) -> WorkerProcess:
        process = self._processes.get(upid)
        if process is None or process.state is ProcessState.CLOSED:
            node = await self._reservation().node_of(upid)
            first_on_node = not any(
                p.node == node and p.state is not ProcessState.CLOSED
                for p in self._processes.values()
            )
            process = WorkerProcess(Location(node, upid))
            self._processes[upid] = process
            if first_on_node:
                self._emit(Status.NODE_DISCOVERED, node)
            self._emit(Status.PROCESS_DISCOVERED, process.location)
        else:
            process.move(ProcessState.DISCOVERED)
            if process.conn is not None:
                process.conn.close()  # the newer connection wins
        process.conn = conn
        process.codes = set(self._code.setup_ids)
        process.last_heard = time.monotonic()
        setup = Setup(
            self.id,
            process.node,
            self._files,
            self._modules,
            self._code.setup_blob,
            self.pulse_interval,
        )
        conn.send(setup)
        return process

    async def _serve(self, process: WorkerProcess, conn: ComputeConnection) -> None:
        while True:
            batch = await conn.read_batch()
            process.last_heard = time.monotonic()
            for message in batch:
                if isinstance(message, Done):
                    self._done(process, message)
                elif isinstance(message, ToTask):
                    self._relay(message)
                elif isinstance(message, ToMailbox):
                    self._to_mailbox(message)
                elif isinstance(message, Ready):
                    self._ready_again(process, message)
                elif not isinstance(message, Pulse):
                    raise ProtocolError(f"unexpected {type(message).__name__} from a worker")

    def _relay(self, message: ToTask) -> None:
        remote = self._tasks.get(message.task)
        if remote is not None and remote.process is not None:
            remote.process.send(message)

    def _to_mailbox(self, message: ToMailbox) -> None:
        box = self._mailboxes.get(message.mailbox)
        if box is not None:
            box.put_nowait(message.payload)

    def _ready_again(self, process: WorkerProcess, ready: Ready) -> None:
        running = set(ready.running)
        for task_id in running - process.tasks.keys():
            process.send(Cancel(task_id))  # settled while the worker was away
        # tasks the worker does not know: it is a new process under the same name (restarted)
        lost = [process.tasks.pop(t) for t in process.tasks.keys() - running]
        first_on_node = not any(
            p.node == process.node and p.state is ProcessState.READY
            for p in self._processes.values()
        )
        if not process.move(ProcessState.READY):
            raise ProtocolError(f"worker {process.location} sent Ready twice")
        if first_on_node:
            self._emit(Status.NODE_INITIALIZED, process.node)
        self._emit(Status.PROCESS_INITIALIZED, process.location)
        self._settle_lost(lost, "restarted")
        orphans, self._orphans = self._orphans, []
        for remote in orphans:
            self._place_again(remote)
        self._changed.set()

    def _done(self, process: WorkerProcess, done: Done) -> None:
        remote = process.tasks.pop(done.task, None)
        if remote is None:
            return  # a task since cancelled, or run again elsewhere
        del self._tasks[done.task]
        if done.ok:
            result = codec.loads(done.payload)
            remote.finish(result)
            self._emit(Status.TASK_FINISHED, remote, result=result)
            return
        try:
            error = codec.loads(done.payload)
        except Exception:
            error = RemoteError(f"task {done.task} failed", done.traceback)
        if isinstance(error, BaseException):
            error.add_note(f"remote traceback, at {process.location}:\n{done.traceback}")
        remote.fail(error)
        self._emit(Status.TASK_FAILED, remote, error=error, traceback=done.traceback)

    async def _pulse(self) -> None:
        while True:
            await asyncio.sleep(self.pulse_interval)
            limit = MISSED_PULSES * self.pulse_interval
            now = time.monotonic()
            for process in list(self._processes.values()):
                if process.state is ProcessState.CLOSED:
                    continue
                if now - process.last_heard > limit:
                    self._lose(process, f"silent for {MISSED_PULSES} pulses")
                elif process.conn is not None:
                    process.send(Pulse(time.time()))

    def _lose(self, process: WorkerProcess, why: str) -> None:
        process.move(ProcessState.CLOSED)
        if process.conn is not None:
            process.conn.close()
            process.conn = None
        self._emit(Status.PROCESS_CLOSED, process.location)
        if not any(
            p.node == process.node and p.state is not ProcessState.CLOSED
            for p in self._processes.values()
        ):
            self._emit(Status.NODE_CLOSED, process.node)
        tasks, process.tasks = process.tasks, {}
        self._settle_lost(list(tasks.values()), why)

    def _settle_lost(self, tasks: list[RemoteTask], why: str) -> None:
        """Tasks whose process is gone: run the retryable ones again, abandon the others."""
        for remote in tasks:
            remote.process = None
            if remote.options.retryable and not self._closed:
                self._place_again(remote)
                continue
            del self._tasks[remote.task]
            error = TaskAbandoned(f"task {remote.task} abandoned: process {remote.location} {why}")
            remote.fail(error)
            self._emit(Status.TASK_ABANDONED, remote, error=error)

    def _place_again(self, remote: RemoteTask) -> None:
        """Another process than the one the task was lost on, if there is one."""
        ready = self._ready()
        target = least_loaded([p for p in ready if p.location != remote.location] or ready, None)
        if target is None:
            self._orphans.append(remote)
        else:
            self._send_run(target, remote)

    # --- status --------------------------------------------------------------------------------

    def _emit(self, status: Status, info: Any, **details: Any) -> None:
        self._status.emit(StatusMessage(status, info, **details))

    # --- closing -------------------------------------------------------------------------------

    async def close(self) -> None:
        """End the computation: pending tasks fail with ``ComputationClosed``; returns once
        the worker processes have ended (or after ``timeout``)."""
        if self._closed:
            return
        self._closed = True
        self._settle_pending()
        for process in self._processes.values():
            if process.state is not ProcessState.CLOSED:
                process.send(Close("the computation closed"))
                self._lose(process, "closed with the computation")
        if self._workers is not None and self._pool is None:
            await self._workers.release(self.timeout)
        await self._status.drain()
        for background in self._background:
            background.cancel()
        if self._server is not None:
            self._server.close()
        for process in self._processes.values():
            if process.conn is not None:
                await process.conn.aclose()
        if self._own_dispatcher and self._dispatcher is not None:
            await self._dispatcher.aclose()

    def _settle_pending(self) -> None:
        for remote in list(self._tasks.values()) + self._orphans:
            remote.fail(ComputationClosed(f"computation {self.id} closed"))
        self._tasks.clear()
        self._orphans.clear()
        for process in self._processes.values():
            process.tasks.clear()

    async def __aenter__(self) -> Computation:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(self, coro: Any) -> None:
        background = asyncio.ensure_future(coro)
        self._background.add(background)
        background.add_done_callback(self._background.discard)
