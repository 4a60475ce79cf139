"""Committed state changes, told to whoever listens: waiters, event streams, subscribers.

The bus is a State listener, so nothing here ever sees a change the store could lose.
Subscriber URLs get each change of their process as a JSON POST from a background task
per URL, retried with backoff; a slow or dead subscriber never blocks the dispatcher (its
queue is bounded and the oldest changes are dropped, with a warning).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import httpx

from corral.core.ids import Upid
from corral.core.model import ProcessRecord
from corral.dispatcher.state import Change_

log = logging.getLogger("corral.events")

#: events a stream or a subscriber may fall behind by before the oldest are dropped
BACKLOG = 10_000
_RETRY_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)


def public_process(record: ProcessRecord) -> dict[str, Any]:
    doc = record.as_doc()
    doc["state"] = str(record.state)
    del doc["scheduled"], doc["attempts"], doc["not_before"]
    doc["restart_attempts"] = record.attempts
    return doc


def event_of(change: Change_) -> dict[str, Any]:
    record = change.record
    previous = change.previous
    return {
        "upid": record.upid,
        "round": record.round,
        "state": str(record.state),
        "previous_state": None if previous is None else str(previous.state),
        "time": record.updated_at,
        "process": public_process(record),
    }


class EventBus:
    def __init__(self) -> None:
        self._changed: dict[Upid, asyncio.Future[None]] = {}
        self._streams: set[tuple[str | None, asyncio.Queue[dict[str, Any]]]] = set()
        self._subscribers: dict[str, _Subscriber] = {}
        self._http: httpx.AsyncClient | None = None

    def on_commit(self, changes: list[Change_]) -> None:
        for change in changes:
            waiter = self._changed.pop(change.record.upid, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        if not self._streams and not any(c.record.request.subscribers for c in changes):
            return
        for change in changes:
            event = event_of(change)
            for upid, queue in self._streams:
                if upid is None or upid == change.record.upid:
                    _put_dropping_oldest(queue, event)
            for url in change.record.request.subscribers:
                self._subscriber(url).deliver(event)

    def next_change(self, upid: Upid) -> asyncio.Future[None]:
        """A future done at the next committed change of ``upid``."""
        waiter = self._changed.get(upid)
        if waiter is None or waiter.done():
            waiter = asyncio.get_running_loop().create_future()
            self._changed[upid] = waiter
        return asyncio.shield(waiter)

    def stream(self, upid: str | None) -> AsyncIterator[dict[str, Any]]:
        """Changes of ``upid`` (or of all processes) from this call on, until closed.

        The subscription is made here, not at the first ``anext``, so a caller that has the
        iterator knows it will miss nothing after that point.
        """
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(BACKLOG)
        entry = (upid, queue)
        self._streams.add(entry)
        return _Stream(self._streams, entry)

    def _subscriber(self, url: str) -> _Subscriber:
        subscriber = self._subscribers.get(url)
        if subscriber is None:
            if self._http is None:
                self._http = httpx.AsyncClient(timeout=5.0)
            subscriber = self._subscribers[url] = _Subscriber(url, self._http)
        return subscriber

    async def aclose(self) -> None:
        for subscriber in self._subscribers.values():
            subscriber.cancel()
        if self._http is not None:
            await self._http.aclose()


def _put_dropping_oldest(queue: asyncio.Queue[dict[str, Any]], event: dict[str, Any]) -> None:
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(event)


class _Stream:
    """One subscriber's iterator over the bus; ``aclose`` unsubscribes."""

    def __init__(
        self,
        streams: set[tuple[str | None, asyncio.Queue[dict[str, Any]]]],
        entry: tuple[str | None, asyncio.Queue[dict[str, Any]]],
    ) -> None:
        self._streams = streams
        self._entry = entry

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self._entry[1].get()

    async def aclose(self) -> None:
        self._streams.discard(self._entry)


class _Subscriber:
    """Delivers events to one URL in order, one at a time, with retries."""

    def __init__(self, url: str, http: httpx.AsyncClient) -> None:
        self.url = url
        self._http = http
        self._backlog: deque[dict[str, Any]] = deque(maxlen=BACKLOG)
        self._task: asyncio.Task[None] | None = None

    def deliver(self, event: dict[str, Any]) -> None:
        if len(self._backlog) == BACKLOG:
            log.warning("subscriber %s is %d events behind; dropping the oldest", self.url, BACKLOG)
        self._backlog.append(event)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while self._backlog:
            event = self._backlog[0]
            for delay in (*_RETRY_DELAYS, None):
                try:
                    response = await self._http.post(self.url, json=event)
                    if response.status_code < 500:
                        break
                    problem = f"status {response.status_code}"
                except httpx.HTTPError as exc:
                    problem = str(exc) or type(exc).__name__
                if delay is None:
                    log.warning(
                        "giving up on event for %s to %s: %s", event["upid"], self.url, problem
                    )
                    break
                await asyncio.sleep(delay)
            self._backlog.popleft()
