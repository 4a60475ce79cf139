"""The queue server: the shared event queues, durable, behind the secret's handshake.

Clients dial it and prove the queue's secret; then they put, take, acknowledge and list
events. The truth is a ``QueueBook`` in memory; what exists (puts, acknowledgements) is
committed through the store's group committer before the request is answered, so an answered
put or acknowledgement survives a crash; takes are answered at once (see ``book`` for how a
restart keeps them safe). A client's events are held while its connection lives (pulses keep
it alive); when it goes, they wait ``visibility_timeout`` seconds for it to come back, then go
to other clients.
A commit that fails stops the server (fail-stop, as the dispatcher does): restarted, it
reloads the store, which is the truth.

The server writes through a group committer it is given, so that it can share the store of
a dispatcher that hosts it (``corral serve --queue``); ``open_queue_server`` runs one on a
store of its own.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from corral.errors import CorralError
from corral.queue.book import Event, QueueBook
from corral.queue.messages import (
    PROTOCOL_VERSION,
    QUEUE_MESSAGES,
    REALM,
    Ack,
    Acked,
    Claim,
    List,
    Listing,
    Pulse,
    Put,
    QueueMessage,
    Refused,
    Release,
    Stored,
    Take,
    Taken,
)
from corral.store.base import Change, Store, Table
from corral.store.group_commit import GroupCommitter
from corral.wire.codec import ConnectionClosed, FramedConnection, ProtocolError
from corral.wire.handshake import AuthenticationFailed, answer_hello

log = logging.getLogger("corral.queue")

QueueConnection = FramedConnection[QueueMessage]

PULSE: Final = 1.0
MISSED_PULSES: Final = 5
HANDSHAKE_TIMEOUT: Final = 10.0


@dataclass
class _Waiter:
    """A Take that found its queue empty and waits for an event."""

    conn: QueueConnection
    holder: str
    request: int
    limit: int
    timer: asyncio.TimerHandle | None = None


class QueueServer:
    def __init__(
        self, committer: GroupCommitter, secret: str, visibility_timeout: float = 30.0
    ) -> None:
        self._secret = secret
        self.visibility_timeout = visibility_timeout
        #: after a restart, how long holders have to claim their events: they reconnect at
        #: once (``QueueClient``), so a few pulses are enough
        self.restart_grace = min(visibility_timeout, MISSED_PULSES * PULSE)
        self._committer = committer
        self._book = QueueBook()
        self._conns: dict[str, QueueConnection] = {}
        self._heard: dict[QueueConnection, float] = {}
        self._waiting: dict[str, deque[_Waiter]] = {}
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._handlers: set[asyncio.Task[Any]] = set()
        self.stopped = asyncio.Event()
        self.address = ("", 0)

    async def start(
        self,
        host: str,
        port: int,
        events: Mapping[str, Mapping[str, Any]],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """Serve the stored ``events`` (the store's events table) on ``host:port``, over TLS
        with ``tls``."""
        self._book = QueueBook.load(events, time.monotonic(), self.restart_grace)
        self._server = await asyncio.start_server(self._accept, host, port, ssl=tls)
        self.address = self._server.sockets[0].getsockname()[:2]
        self._tasks = [asyncio.ensure_future(self._tick())]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self._heard):
            conn.close()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)
        self.stopped.set()

    def describe(self, limit: int) -> dict[str, Any]:
        """What the queues hold, for operators: per queue, the number of pending and of
        in-progress (held) events, and the first ``limit`` of each."""
        queues = []
        for name in self._book.queue_names():
            pending, held = self._book.listing(name)
            queues.append(
                {
                    "queue": name,
                    "pending": len(pending),
                    "in_progress": len(held),
                    "next": [_shown(e) for e in pending[:limit]],
                    "held": [_shown(e) for e in held[:limit]],
                }
            )
        host, port = self.address[:2]
        return {"address": f"{host}:{port}", "clients": len(self._conns), "queues": queues}

    # --- connections ---------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
            handler.add_done_callback(self._handlers.discard)
        conn: QueueConnection = FramedConnection(reader, writer, QUEUE_MESSAGES)
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                hello = await answer_hello(conn, self._secret, REALM, PROTOCOL_VERSION)
        except (AuthenticationFailed, ProtocolError, ConnectionClosed, TimeoutError) as exc:
            log.warning("refused a client from %s: %s", conn.peer, exc)
            await conn.aclose()
            return
        holder = hello.peer
        previous = self._conns.get(holder)
        if previous is not None:
            previous.close()  # the newer connection of the same client wins
        self._conns[holder] = conn
        self._heard[conn] = time.monotonic()
        self._book.back(holder)
        try:
            while True:
                batch = await conn.read_batch()
                self._heard[conn] = time.monotonic()
                for message in batch:
                    self._handle(conn, holder, message)
        except (ConnectionClosed, ProtocolError) as exc:
            log.info("client %s left: %s", holder, exc)
        finally:
            await conn.aclose()
            self._heard.pop(conn, None)
            self._forget_waiters(conn)
            if self._conns.get(holder) is conn:
                del self._conns[holder]
                self._book.away(holder, time.monotonic() + self.visibility_timeout)

    def _handle(self, conn: QueueConnection, holder: str, message: QueueMessage) -> None:
        if isinstance(message, Put):
            events, changes = self._book.put(message.queue, message.events)
            ids = [e.id for e in events]
            self._commit(conn, message.request, changes, lambda: Stored(message.request, ids))
            self._serve_waiters(message.queue)
        elif isinstance(message, Take):
            self._take(conn, holder, message)
        elif isinstance(message, Ack):
            refused, changes = self._book.ack(holder, message.ids)
            self._commit(conn, message.request, changes, lambda: Acked(message.request, refused))
            self._serve_all_waiters()  # a recurrent event went back
        elif isinstance(message, Release | Claim):
            operation = self._book.release if isinstance(message, Release) else self._book.claim
            conn.send(Acked(message.request, operation(holder, message.ids)))
            self._serve_all_waiters()
        elif isinstance(message, List):
            pending, held = self._book.listing(message.queue)
            conn.send(
                Listing(message.request, [e.wire() for e in pending], [e.wire() for e in held])
            )
        elif not isinstance(message, Pulse):
            raise ProtocolError(f"unexpected {type(message).__name__} from a queue client")

    def _take(self, conn: QueueConnection, holder: str, take: Take) -> None:
        if self._book.pending_count(take.queue) or take.wait <= 0:
            self._give(conn, holder, take.request, take.queue, take.limit)
            return
        waiter = _Waiter(conn, holder, take.request, take.limit)
        waiter.timer = asyncio.get_running_loop().call_later(
            take.wait, self._time_out, take.queue, waiter
        )
        self._waiting.setdefault(take.queue, deque()).append(waiter)

    def _give(
        self, conn: QueueConnection, holder: str, request: int, queue: str, limit: int
    ) -> None:
        # a fair share, so that one client's large limit does not starve the others
        share = math.ceil(self._book.pending_count(queue) / max(1, len(self._conns)))
        events = self._book.take(queue, holder, max(1, min(limit, share)))
        conn.send(Taken(request, [e.wire() for e in events]))

    def _time_out(self, queue: str, waiter: _Waiter) -> None:
        waiting = self._waiting.get(queue)
        if waiting is not None and waiter in waiting:
            waiting.remove(waiter)
            waiter.conn.send(Taken(waiter.request, []))

    def _serve_waiters(self, queue: str) -> None:
        waiting = self._waiting.get(queue)
        while waiting and self._book.pending_count(queue):
            waiter = waiting.popleft()
            if waiter.timer is not None:
                waiter.timer.cancel()
            self._give(waiter.conn, waiter.holder, waiter.request, queue, waiter.limit)

    def _serve_all_waiters(self) -> None:
        for queue in list(self._waiting):
            self._serve_waiters(queue)

    def _forget_waiters(self, conn: QueueConnection) -> None:
        for waiting in self._waiting.values():
            for waiter in [w for w in waiting if w.conn is conn]:
                if waiter.timer is not None:
                    waiter.timer.cancel()
                waiting.remove(waiter)

    def _commit(
        self,
        conn: QueueConnection,
        request: int,
        changes: Sequence[Change],
        answer: Callable[[], QueueMessage],
    ) -> None:
        """Answer once ``changes`` are durable; a failed commit stops the server."""
        if not changes:
            conn.send(answer())
            return

        def committed(future: asyncio.Future[None]) -> None:
            error = future.exception()
            if error is None:
                conn.send(answer())
                return
            message = error.message if isinstance(error, CorralError) else str(error)
            conn.send(Refused(request, f"the queue could not store the change: {message}"))
            log.error("a commit failed, the queue server stops: %s", message)
            self._tasks.append(asyncio.ensure_future(self.aclose()))

        self._committer.commit_nowait(changes).add_done_callback(committed)

    async def _tick(self) -> None:
        """Pulses out, silent clients dropped, and events of long-gone holders given back."""
        while True:
            await asyncio.sleep(PULSE)
            now = time.monotonic()
            for conn, heard in list(self._heard.items()):
                if now - heard > MISSED_PULSES * PULSE:
                    conn.close()
                else:
                    conn.send(Pulse(time.time()))
            for queue in self._book.expire(now):
                self._serve_waiters(queue)


def _shown(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "name": event.name,
        "args": event.args,
        "recurrent": event.recurrent,
        "attempts": event.attempts,
        "holder": event.holder,
    }


class OwnQueueServer(QueueServer):
    """A queue server on a store of its own, which it opens, loads and closes."""

    def __init__(self, store: Store, secret: str, visibility_timeout: float = 30.0) -> None:
        super().__init__(GroupCommitter(store), secret, visibility_timeout)
        self._store = store

    async def listen(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        loaded = await asyncio.to_thread(self._store.load)
        await self._committer.start()
        await self.start(host, port, loaded.tables[Table.EVENTS], tls)

    async def aclose(self) -> None:
        await super().aclose()
        await self._committer.aclose()
        self._store.close()
