"""A computation's view of one worker process, and the states it moves through.

::

    DISCOVERED ──Ready──► READY ──connection lost──► DISCONNECTED ──dials again──► DISCOVERED
         │                  │                              │
         └──────────────────┴─────── silent or away for five pulses ─────────► CLOSED

A CLOSED process that dials again is a new ``WorkerProcess`` (its old tasks were settled).
"""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING, Final

from corral.compute.auth import ComputeConnection
from corral.compute.handles import Location
from corral.compute.messages import ComputeMessage

if TYPE_CHECKING:
    from corral.compute.tasks import RemoteTask


class ProcessState(enum.Enum):
    DISCOVERED = "discovered"
    READY = "ready"
    DISCONNECTED = "disconnected"
    CLOSED = "closed"


_MOVES: Final = {
    ProcessState.DISCOVERED: {ProcessState.READY, ProcessState.DISCONNECTED, ProcessState.CLOSED},
    ProcessState.READY: {ProcessState.DISCOVERED, ProcessState.DISCONNECTED, ProcessState.CLOSED},
    ProcessState.DISCONNECTED: {ProcessState.DISCOVERED, ProcessState.CLOSED},
    ProcessState.CLOSED: set(),
}


class WorkerProcess:
    """One worker process: its connection, its tasks and the code it already holds."""

    __slots__ = ("codes", "conn", "last_heard", "location", "state", "tasks")

    def __init__(self, location: Location) -> None:
        self.location = location
        self.state = ProcessState.DISCOVERED
        self.conn: ComputeConnection | None = None
        self.tasks: dict[int, RemoteTask] = {}
        self.codes: set[int] = set()
        self.last_heard = time.monotonic()

    @property
    def node(self) -> str:
        return self.location.node

    @property
    def load(self) -> int:
        return len(self.tasks)

    def move(self, to: ProcessState) -> bool:
        """Move to ``to``; False (and no move) if that is not a move from the current state."""
        if to is self.state or to not in _MOVES[self.state]:
            return False
        self.state = to
        return True

    def send(self, message: ComputeMessage) -> None:
        if self.conn is not None:
            self.conn.send(message)

    def __repr__(self) -> str:
        return f"<worker {self.location} {self.state.value}, {self.load} tasks>"
