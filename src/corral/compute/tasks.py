"""The client's handle to a remote task, and the options a function runs with as a task."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from corral.compute.handles import Location, TaskHandle
from corral.compute.messages import Run

if TYPE_CHECKING:
    from corral.compute.processes import WorkerProcess


@dataclass(frozen=True)
class TaskOptions:
    """How a function runs as a task (set with the ``task`` decorator)."""

    io: bool = False
    retryable: bool = False


def task(*, io: bool = False, retryable: bool = False) -> Callable[[Any], Any]:
    """Mark a function: ``io`` tasks run concurrently on their process (CPU-bound ones run one
    at a time); ``retryable`` tasks run again on another process when theirs is lost."""

    def mark(func: Any) -> Any:
        func.__corral_task__ = TaskOptions(io, retryable)
        return func

    return mark


class RemoteTask(TaskHandle):
    """A task running (or about to run) on a worker process."""

    __slots__ = ("_future", "location", "options", "process", "run")

    def __init__(self, computation: str, run: Run, options: TaskOptions) -> None:
        super().__init__(computation, run.task)
        self.run = run
        self.options = options
        self.process: WorkerProcess | None = None
        self.location: Location | None = None
        self._future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def result(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109 - discoro's API
        """The task's result; raises the task's exception, ``TaskAbandoned`` or
        ``ComputationClosed``."""
        async with asyncio.timeout(timeout):
            return await asyncio.shield(self._future)

    def done(self) -> bool:
        return self._future.done()

    def add_done_callback(self, callback: Callable[[RemoteTask], None]) -> None:
        self._future.add_done_callback(lambda _: callback(self))

    def finish(self, result: Any) -> None:
        self._future.set_result(result)

    def fail(self, error: BaseException) -> None:
        """Settle with ``error``; a task whose result nobody awaits fails silently."""
        if not self._future.done():
            self._future.set_exception(error)
            self._future.exception()  # marks it retrieved: no "never retrieved" log

    def __repr__(self) -> str:
        return f"<task {self.task} of {self.computation} at {self.location}>"
