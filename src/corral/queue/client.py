"""Clients of the queue server: ``QueueClient`` for asyncio, ``BlockingQueueClient`` for threads.

A client has an id (the holder of the events it takes); a client that reconnects under the
same id within the server's visibility timeout keeps the events it held, and one that finds
the server restarted claims them again. Requests are pipelined: each waits for its own
answer, many can be in flight on one connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping
from concurrent.futures import Future
from typing import Any, TypeVar

from corral.errors import CorralError, Unavailable
from corral.queue.messages import (
    PROTOCOL_VERSION,
    QUEUE_MESSAGES,
    REALM,
    Ack,
    Acked,
    Claim,
    List,
    Listing,
    NewEvent,
    Pulse,
    Put,
    QueuedEvent,
    QueueMessage,
    Refused,
    Release,
    Stored,
    Take,
    Taken,
)
from corral.queue.server import PULSE
from corral.wire.codec import ConnectionClosed, FramedConnection, ProtocolError
from corral.wire.handshake import new_hello, send_hello

T = TypeVar("T")

#: how long a client holding events keeps dialling a server that went away
RECLAIM_WINDOW = 60.0
A = TypeVar("A", Stored, Taken, Acked, Listing)

#: an event to put: (name, arguments, recurrent)
EventSpec = tuple[str, Mapping[str, Any], bool]


class QueueRefused(CorralError):
    """The server could not carry out the request."""


class QueueClient:
    def __init__(
        self,
        host: str,
        port: int,
        secret: str,
        client_id: str | None = None,
        *,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``tls``: dial over TLS with this context (None: in clear)."""
        self.host, self.port = host, port
        self._tls = tls
        self._secret = secret
        self.client_id = client_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._conn: FramedConnection[QueueMessage] | None = None
        self._requests = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[QueueMessage]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        #: the events this client holds: claimed again when it reconnects
        self.held: set[int] = set()
        self._closing = False
        self._connecting = asyncio.Lock()

    async def connect(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - a deadline
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self._tls)
                conn: FramedConnection[QueueMessage] = FramedConnection(
                    reader, writer, QUEUE_MESSAGES
                )
                hello = new_hello(PROTOCOL_VERSION, REALM, self.client_id, socket.gethostname())
                try:
                    await send_hello(conn, self._secret, hello)
                except BaseException:
                    await conn.aclose()
                    raise
        except (OSError, TimeoutError, ConnectionClosed) as exc:
            raise Unavailable(
                f"no queue server answers at {self.host}:{self.port}: {exc or 'timed out'}"
            ) from None
        self._conn = conn
        self._tasks = [
            asyncio.ensure_future(self._read(conn)),
            asyncio.ensure_future(self._pulse(conn)),
        ]
        if self.held:
            lost = await self._request(lambda r: Claim(r, sorted(self.held)), Acked)
            self.held.difference_update(lost.refused)

    async def aclose(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        if self._conn is not None:
            await self._conn.aclose()
            self._conn = None

    async def _read(self, conn: FramedConnection[QueueMessage]) -> None:
        try:
            while True:
                for message in await conn.read_batch():
                    request = getattr(message, "request", None)
                    future = self._waiting.pop(request, None) if request is not None else None
                    if future is not None and not future.done():
                        future.set_result(message)
        except (ConnectionClosed, ProtocolError) as exc:
            error = Unavailable(f"the queue server at {self.host}:{self.port} went away: {exc}")
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(error)
            self._waiting.clear()
            conn.close()
        if conn is self._conn and self.held and not self._closing:
            self._tasks.append(asyncio.ensure_future(self._come_back()))

    async def _come_back(self) -> None:
        """Reconnect at once while holding events: a restarted server gives a holder a few
        seconds to claim them before it hands them out again."""
        deadline = time.monotonic() + RECLAIM_WINDOW
        while self.held and not self._closing and time.monotonic() < deadline:
            try:
                await self._ensure_connected(timeout=1.0)
                return
            except Unavailable:
                await asyncio.sleep(0.2)

    async def _ensure_connected(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        async with self._connecting:  # one dial at a time: two would replace each other
            if self._conn is None or self._conn.closed:
                await self.connect(timeout)

    async def _pulse(self, conn: FramedConnection[QueueMessage]) -> None:
        while not conn.closed:
            conn.send(Pulse(time.time()))
            await asyncio.sleep(PULSE)

    async def _ask(self, make: Callable[[int], QueueMessage], kind: type[A]) -> A:
        await self._ensure_connected()
        return await self._request(make, kind)

    async def _request(self, make: Callable[[int], QueueMessage], kind: type[A]) -> A:
        conn = self._conn
        request = next(self._requests)
        future: asyncio.Future[QueueMessage] = asyncio.get_running_loop().create_future()
        self._waiting[request] = future
        if conn is not None:
            conn.send(make(request))
        answer = await future
        if isinstance(answer, Refused):
            raise QueueRefused(answer.message)
        if not isinstance(answer, kind):
            raise ProtocolError(f"the queue server answered {type(answer).__name__}")
        return answer

    async def put(self, queue: str, events: Iterable[EventSpec]) -> list[int]:
        """Append events to ``queue``; returns their ids once they are durable."""
        new = [
            NewEvent(name, json.dumps(dict(args)), recurrent) for name, args, recurrent in events
        ]
        return (await self._ask(lambda r: Put(r, queue, new), Stored)).ids

    async def take(self, queue: str, limit: int = 1, wait: float = 0.0) -> list[QueuedEvent]:
        """Up to ``limit`` events, now held by this client; waits up to ``wait`` s for one."""
        events = (await self._ask(lambda r: Take(r, queue, limit, wait), Taken)).events
        self.held.update(e.id for e in events)
        return events

    async def ack(self, ids: Iterable[int]) -> list[int]:
        """These events are handled; returns the ids this client no longer held."""
        ids = list(ids)
        refused = (await self._ask(lambda r: Ack(r, ids), Acked)).refused
        self.held.difference_update(ids)  # after: a reconnection on the way claims them first
        return refused

    async def release(self, ids: Iterable[int]) -> list[int]:
        """Give events back unhandled (to the front of their queues)."""
        ids = list(ids)
        refused = (await self._ask(lambda r: Release(r, ids), Acked)).refused
        self.held.difference_update(ids)
        return refused

    async def listing(self, queue: str) -> tuple[list[QueuedEvent], list[QueuedEvent]]:
        """The pending and the held events of ``queue``."""
        answer = await self._ask(lambda r: List(r, queue), Listing)
        return answer.pending, answer.held


class BlockingQueueClient:
    """A ``QueueClient`` for threaded code: it runs on an event loop of its own thread."""

    def __init__(
        self,
        host: str,
        port: int,
        secret: str,
        client_id: str | None = None,
        *,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._client = QueueClient(host, port, secret, client_id, tls=tls)
        self.client_id = self._client.client_id

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result()

    def connect(self, timeout: float = 10.0) -> None:
        self._call(self._client.connect(timeout))

    def put(self, queue: str, events: Iterable[EventSpec]) -> list[int]:
        return self._call(self._client.put(queue, list(events)))

    def take(self, queue: str, limit: int = 1, wait: float = 0.0) -> list[QueuedEvent]:
        return self._call(self._client.take(queue, limit, wait))

    def ack(self, ids: Iterable[int]) -> list[int]:
        return self._call(self._client.ack(list(ids)))

    def release(self, ids: Iterable[int]) -> list[int]:
        return self._call(self._client.release(list(ids)))

    def listing(self, queue: str) -> tuple[list[QueuedEvent], list[QueuedEvent]]:
        return self._call(self._client.listing(queue))

    def held(self) -> list[int]:
        """The events this client holds now."""
        return sorted(self._client.held)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
