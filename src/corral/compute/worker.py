"""A computation's worker process: ``python -m corral.compute``.

The dispatcher starts it as an ordinary process; the ``compute`` key of its configuration
says which of two ways it serves:

- **its own computation** (``address``, ``computation``): it dials the client, and when the
  connection drops it dials again for five pulses while its tasks go on; then it gives up,
  cancels its tasks and exits 0, which releases its slot. ``Close`` ends it at once.
- **a shared pool** (``pool``): it listens (on ``listen``, loopback by default), prints
  ``LISTENING host:port`` on its standard output for clients to read through the
  dispatcher, and serves every client that proves the pool's secret, each in a session of its
  own that ends when its client closes it or stays away for five pulses.

Either way, each connection proves the secret (``corral.wire.handshake``) before a pickle is
read. CPU-bound tasks run one at a time, on a thread with an event loop of its own, so that
pulses and messages keep flowing while a task computes; I/O-bound tasks run concurrently on
the connection's loop (``corral.compute.session``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from corral import eventloop
from corral.compute.auth import ComputeConnection
from corral.compute.messages import COMPUTE_MESSAGES, PROTOCOL_VERSION, ComputeMessage, Setup
from corral.compute.session import MISSED_PULSES, Session, Task
from corral.tls import trusting
from corral.wire.codec import ConnectionClosed, FramedConnection, ProtocolError
from corral.wire.handshake import AuthenticationFailed, new_hello, send_hello

log = logging.getLogger("corral.compute.worker")

#: how a pool worker announces its address on its standard output
LISTENING: Final = "LISTENING"
#: exit code when the client cannot prove the secret (not worth a restart)
EXIT_REFUSED: Final = 3
EXIT_USAGE: Final = 2


@dataclass(frozen=True)
class WorkerSettings:
    worker: str
    secret: str
    pulse_interval: float
    #: its own computation: the client's computation and address
    computation: str = ""
    host: str = ""
    port: int = 0
    certificate: str | None = None
    #: a shared pool: its name and where to listen
    pool: str = ""
    listen: str = "127.0.0.1"
    connect_timeout: float = 30.0

    @classmethod
    def from_configuration(cls, configuration: Mapping[str, Any], worker: str) -> WorkerSettings:
        """Read the ``compute`` section; raises ValueError naming a missing or wrong key."""
        section = configuration.get("compute")
        if not isinstance(section, Mapping):
            raise ValueError("configuration.compute is missing")
        try:
            secret = str(section["secret"])
            pulse_interval = float(section["pulse_interval"])
            if "pool" in section:
                return cls(
                    worker,
                    secret,
                    pulse_interval,
                    pool=str(section["pool"]),
                    listen=str(section.get("listen", "127.0.0.1")),
                )
            host, _, port = str(section["address"]).rpartition(":")
            return cls(
                worker,
                secret,
                pulse_interval,
                computation=str(section["computation"]),
                host=host.strip("[]"),
                port=int(port),
                certificate=section.get("certificate"),
            )
        except KeyError as exc:
            raise ValueError(f"configuration.compute.{exc.args[0]} is missing") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"configuration.compute: {exc}") from None


class _Outbox:
    """Messages made on the CPU thread, handed to the connections' loop once per batch."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._items: list[tuple[Session, ComputeMessage]] = []

    def put(self, session: Session, message: ComputeMessage) -> None:
        with self._lock:
            self._items.append((session, message))
            first = len(self._items) == 1
        if first:
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        for session, message in items:
            session.send(message)


class _CpuRunner:
    """Runs CPU-bound tasks one at a time on a thread with an event loop of its own."""

    def __init__(self, execute: Callable[[Task], Awaitable[None]]) -> None:
        self._execute = execute
        self._queue: deque[Task] = deque()
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

    def submit(self, tasks: Iterable[Task]) -> None:
        self._queue.extend(tasks)
        self.loop.call_soon_threadsafe(self._wake.set)

    def cancel(self, task: Task) -> None:
        task.cancelled = True
        self.loop.call_soon_threadsafe(task.cancel)

    def stop(self) -> None:
        self._stopping = True
        for task in self._queue:
            task.cancelled = True
        self.loop.call_soon_threadsafe(self._wake.set)
        # a task computing cannot be interrupted: the process exits without it
        self._thread.join(1)


class Worker:
    """One worker process: its sessions, its CPU thread, and how it meets its clients."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self._base = Path(tempfile.mkdtemp(prefix="corral-compute-"))
        self._cwd = Path.cwd()
        self._outbox = _Outbox(self.loop)
        self._runner = _CpuRunner(self._run_cpu_task)
        self._sessions: dict[str, Session] = {}

    # --- what sessions need (session.Host) -----------------------------------------------------

    def run_cpu(self, tasks: list[Task]) -> None:
        self._runner.submit(tasks)

    def cancel_cpu(self, task: Task) -> None:
        self._runner.cancel(task)

    def from_thread(self, session: Session, message: ComputeMessage) -> None:
        self._outbox.put(session, message)

    async def _run_cpu_task(self, task: Task) -> None:
        directory = task.session.directory
        if directory != self._cwd:  # one at a time: the process's directory is the task's
            os.chdir(directory)
            self._cwd = directory
        await task.session.execute(task)

    # --- serving -------------------------------------------------------------------------------

    async def run(self) -> int:
        try:
            if self.settings.pool:
                await self._serve_pool()
            else:
                await self._serve_own()
        except AuthenticationFailed as exc:
            log.error("%s", exc.message)
            return EXIT_REFUSED
        finally:
            self._shut_down()
        return 0

    async def _handshake(self, conn: ComputeConnection, name: str) -> tuple[Setup, list[Any]]:
        """Prove the secret and take the client's Setup (the first frame after the proofs)."""
        hello = new_hello(PROTOCOL_VERSION, name, self.settings.worker, socket.gethostname())
        async with asyncio.timeout(MISSED_PULSES * self.settings.pulse_interval + 5):
            await send_hello(conn, self.settings.secret, hello)
            batch = await conn.read_batch()
        if not batch or not isinstance(batch[0], Setup):
            raise ProtocolError("expected Setup after the proofs")
        return batch[0], batch[1:]

    async def _serve_own(self) -> None:
        settings = self.settings
        session = self._session(settings.computation)
        deadline = time.monotonic() + settings.connect_timeout
        while (conn := await self._dial(deadline)) is not None:
            try:
                setup, rest = await self._handshake(conn, settings.computation)
                if await session.serve(conn, setup, rest):
                    return
            except (ConnectionClosed, ProtocolError, TimeoutError) as exc:
                log.warning("connection to the client lost: %s", exc)
            finally:
                conn.close()
            # from now, not from when the client was last heard: a worker that was stopped
            # or cut off still tries, and a live client takes it back
            deadline = time.monotonic() + MISSED_PULSES * settings.pulse_interval

    async def _dial(self, deadline: float) -> ComputeConnection | None:
        settings = self.settings
        # The certificate travels with the worker's configuration, so the pin replaces a host
        # name check: a client may be reached by any address.
        tls = trusting(settings.certificate, check_hostname=False) if settings.certificate else None
        pause = min(0.05, settings.pulse_interval)
        while True:
            try:
                async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                    reader, writer = await asyncio.open_connection(
                        settings.host, settings.port, ssl=tls
                    )
                return FramedConnection(reader, writer, COMPUTE_MESSAGES)
            except (OSError, TimeoutError) as exc:
                if time.monotonic() + pause >= deadline:
                    log.warning("giving up on the client at %s: %s", settings.host, exc)
                    return None
                await asyncio.sleep(pause)
                pause = min(pause * 2, settings.pulse_interval)

    async def _serve_pool(self) -> None:
        server = await asyncio.start_server(self._accept, self.settings.listen, 0)
        host, port = server.sockets[0].getsockname()[:2]
        print(f"{LISTENING} {host}:{port}", flush=True)
        async with server:
            await server.serve_forever()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn: ComputeConnection = FramedConnection(reader, writer, COMPUTE_MESSAGES)
        closed = False
        session: Session | None = None
        try:
            setup, rest = await self._handshake(conn, self.settings.pool)
            session = self._session(setup.computation)
            closed = await session.serve(conn, setup, rest)
        except (AuthenticationFailed, ConnectionClosed, ProtocolError, TimeoutError) as exc:
            log.warning("connection from %s ended: %s", conn.peer, exc)
        finally:
            conn.close()
        if session is None:
            return
        if closed:
            self._drop(session)
        else:  # its client has five pulses to come back
            self.loop.call_later(MISSED_PULSES * session.pulse_interval, self._expire, session)

    def _session(self, computation: str) -> Session:
        session = self._sessions.get(computation)
        if session is None:
            directory = self._base / (computation or "session")
            session = self._sessions[computation] = Session(self, self.settings.worker, directory)
            sys.path.insert(0, str(directory))
        return session

    def _expire(self, session: Session) -> None:
        if not session.connected and self._sessions.get(session.computation) is session:
            self._drop(session)

    def _drop(self, session: Session) -> None:
        session.end(self._runner.cancel)
        self._sessions.pop(session.computation, None)
        with contextlib.suppress(ValueError):
            sys.path.remove(str(session.directory))
        shutil.rmtree(session.directory, ignore_errors=True)

    def _shut_down(self) -> None:
        for session in list(self._sessions.values()):
            self._drop(session)
        self._runner.stop()
        os.chdir(self._base.parent)
        shutil.rmtree(self._base, ignore_errors=True)


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
        # terminated by the dispatcher: end as on Close, so the working directory goes too
        task = asyncio.current_task()
        if task is not None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await Worker(settings).run()
        except asyncio.CancelledError:
            return 0

    return eventloop.run(work())
