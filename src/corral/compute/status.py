"""The status messages a computation sends to its ``status`` callback.

The names follow discoro's (node and process discovered, initialized, closed; task created,
finished, failed, abandoned), with ``*Disconnected`` for a peer whose connection dropped and
that has a grace of five pulses to come back before it is closed.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("corral.compute")


class Status(enum.Enum):
    NODE_DISCOVERED = "NodeDiscovered"
    NODE_INITIALIZED = "NodeInitialized"
    NODE_DISCONNECTED = "NodeDisconnected"
    NODE_CLOSED = "NodeClosed"
    PROCESS_DISCOVERED = "ProcessDiscovered"
    PROCESS_INITIALIZED = "ProcessInitialized"
    PROCESS_DISCONNECTED = "ProcessDisconnected"
    PROCESS_CLOSED = "ProcessClosed"
    TASK_CREATED = "TaskCreated"
    TASK_FINISHED = "TaskFinished"
    TASK_FAILED = "TaskFailed"
    TASK_ABANDONED = "TaskAbandoned"


@dataclass(frozen=True)
class StatusMessage:
    """``info`` is a node id (node statuses), a ``Location`` (process statuses) or a
    ``RemoteTask`` (task statuses). ``error`` and ``traceback`` say why a task failed or was
    abandoned; ``result`` is a finished task's result."""

    status: Status
    info: Any
    error: BaseException | None = None
    traceback: str = ""
    result: Any = None


StatusCallback = Callable[[StatusMessage], Awaitable[None] | None]


class StatusFeed:
    """Status messages handed to the callback in order, one at a time, off the hot path."""

    def __init__(self, callback: StatusCallback | None) -> None:
        self._callback = callback
        self._queue: asyncio.Queue[StatusMessage] = asyncio.Queue()

    @property
    def wanted(self) -> bool:
        return self._callback is not None

    def emit(self, message: StatusMessage) -> None:
        if self._callback is not None:
            self._queue.put_nowait(message)

    async def deliver(self) -> None:
        """Run for the computation's life: call (and await) the callback on each message."""
        if self._callback is None:
            return
        while True:
            message = await self._queue.get()
            try:
                outcome = self._callback(message)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                log.exception("the status callback failed on %s", message.status.value)
            finally:
                self._queue.task_done()

    async def drain(self) -> None:
        """Wait until every message emitted so far was delivered."""
        await self._queue.join()
