"""The status messages a computation sends to its ``status`` callback.

The names follow discoro's (node and process discovered, initialized, closed; task created,
finished, failed, abandoned), with ``*Disconnected`` for a peer whose connection dropped and
that has a grace of five pulses to come back before it is closed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


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
