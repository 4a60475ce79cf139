"""Handles to tasks and mailboxes, which keep their meaning when pickled to another process.

A ``TaskHandle`` names a task, a ``MailboxHandle`` one of the client's mailboxes; both carry
the computation's id. Unpickled in a process, a handle binds to that process's endpoint for
the computation: the client (whose handles are its ``RemoteTask`` objects) or the worker
(which sends through its connection; the client relays messages between workers). So a task
can be given another task's handle, or the client's, as an argument and ``await h.send(m)``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Protocol

from corral.compute.errors import ComputeError


@dataclass(frozen=True, slots=True)
class Location:
    """Where a worker process runs: its node and its process (the dispatcher's upid)."""

    node: str
    process: str

    def __str__(self) -> str:
        return f"{self.process}@{self.node}"


class Endpoint(Protocol):
    """This process's side of a computation: how its handles deliver messages."""

    def post_task(self, task: int, message: Any) -> None: ...

    def post_mailbox(self, mailbox: int, message: Any) -> None: ...

    def task_handle(self, task: int) -> TaskHandle: ...


_endpoints: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


def register_endpoint(computation: str, endpoint: Endpoint) -> None:
    _endpoints[computation] = endpoint


def _endpoint(computation: str) -> Endpoint:
    found: Endpoint | None = _endpoints.get(computation)
    if found is None:
        raise ComputeError(f"computation {computation} is not open in this process")
    return found


class TaskHandle:
    """A task of a computation, to which messages can be sent from anywhere."""

    __slots__ = ("__weakref__", "computation", "task")

    def __init__(self, computation: str, task: int) -> None:
        self.computation = computation
        self.task = task

    async def send(self, message: Any) -> None:
        """Queue ``message`` for the task's ``receive``; it leaves at once, unacknowledged."""
        _endpoint(self.computation).post_task(self.task, message)

    def __reduce__(self) -> tuple[Any, ...]:
        return _task_handle, (self.computation, self.task)

    def __repr__(self) -> str:
        return f"<task {self.task} of {self.computation}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskHandle) and (other.computation, other.task) == (
            self.computation,
            self.task,
        )

    def __hash__(self) -> int:
        return hash((self.computation, self.task))


class MailboxHandle:
    """One of the client's mailboxes; tasks send to it, the client ``receive``\\ s from it."""

    __slots__ = ("computation", "mailbox")

    def __init__(self, computation: str, mailbox: int) -> None:
        self.computation = computation
        self.mailbox = mailbox

    async def send(self, message: Any) -> None:
        _endpoint(self.computation).post_mailbox(self.mailbox, message)

    def __reduce__(self) -> tuple[Any, ...]:
        return MailboxHandle, (self.computation, self.mailbox)

    def __repr__(self) -> str:
        return f"<mailbox {self.mailbox} of {self.computation}>"


def _task_handle(computation: str, task: int) -> TaskHandle:
    endpoint = _endpoints.get(computation)
    return TaskHandle(computation, task) if endpoint is None else endpoint.task_handle(task)
