"""Group commit: many concurrent callers, one durable transaction at a time.

A transaction costs an fsync whatever its size, so one transaction per change would cap the
dispatcher at the disk's fsync rate. `GroupCommitter` runs at most one transaction at a time
on a dedicated writer thread; what callers commit meanwhile accumulates and goes into the
next one. There is no timer: a lone commit waits for exactly one transaction, and under load
batches grow by themselves to what arrives during one fsync.

Batches are applied in the order they were formed, so a later commit to a key never loses to
an earlier one, and within a pending batch the last change to a ``(table, key)`` replaces the
earlier ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from corral.errors import StoreError
from corral.store.base import Change, Store, Table


@dataclass(frozen=True, slots=True)
class CommitStatistics:
    """Counters since `GroupCommitter.start`."""

    #: commit calls acknowledged as durable
    commits: int
    #: transactions committed
    transactions: int
    #: changes written by those transactions, after coalescing
    changes: int
    #: changes in the largest transaction
    largest_batch: int
    #: transactions that failed; their callers got the exception
    failures: int


class GroupCommitter:
    """Batches changes from concurrent asyncio callers into single `Store.apply` calls.

    ``await start()`` before the first commit and ``await aclose()`` at the end; closing
    flushes what is pending but does not close the store, which the caller owns. Docs handed
    to `commit` must not be mutated afterwards: they are serialised later, on the writer
    thread.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: dict[tuple[Table, str], Change] = {}
        # one future per commit call since the last batch was taken
        self._waiters: list[asyncio.Future[None]] = []
        self._in_flight: list[asyncio.Future[None]] = []
        self._wakeup = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._commits = 0
        self._transactions = 0
        self._changes = 0
        self._largest = 0
        self._failures = 0

    async def start(self) -> None:
        """Start the writer thread and the task that feeds it."""
        if self._task is not None:
            raise RuntimeError("GroupCommitter.start() was already called")
        self._loop = asyncio.get_running_loop()
        # a dedicated thread, not the loop's default executor: a transaction must never wait
        # behind unrelated blocking calls, and the store wants one thread
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="corral-store")
        self._task = asyncio.create_task(self._run(), name="corral-group-commit")

    def commit_nowait(self, changes: Sequence[Change]) -> asyncio.Future[None]:
        """Enqueue ``changes``; the future resolves once they are durable.

        It fails with the store's exception if their transaction fails. An empty commit
        resolves once everything enqueued before it is durable.
        """
        if self._loop is None:
            raise RuntimeError("await GroupCommitter.start() before committing")
        if self._closing:
            raise StoreError("the group committer is closed; the changes were not committed")
        future: asyncio.Future[None] = self._loop.create_future()
        pending = self._pending
        for change in changes:
            pending[change.table, change.key] = change
        self._waiters.append(future)
        self._wakeup.set()
        return future

    async def commit(self, changes: Sequence[Change]) -> None:
        """Commit ``changes`` and return once they are durable.

        Cancelling the caller stops the wait, not the commit: the changes may still land.
        """
        await self.commit_nowait(changes)

    async def aclose(self) -> None:
        """Refuse new commits, flush the pending ones, then stop the writer thread."""
        if self._task is None or self._closing:
            return
        self._closing = True
        self._wakeup.set()
        try:
            await self._task
        finally:
            assert self._executor is not None
            # waits only if aclose was cancelled mid-transaction; either way the store is
            # idle when we return, so the caller may close it
            self._executor.shutdown(wait=True)

    def statistics(self) -> CommitStatistics:
        """A snapshot of the counters."""
        return CommitStatistics(
            commits=self._commits,
            transactions=self._transactions,
            changes=self._changes,
            largest_batch=self._largest,
            failures=self._failures,
        )

    async def _run(self) -> None:
        try:
            while True:
                if not self._waiters:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    # One more loop turn before the batch is taken: work woken by the same
                    # event (a placement made for a process just scheduled) joins this
                    # transaction instead of waiting for the next one.
                    await asyncio.sleep(0)
                    continue
                await self._apply_next_batch()
        finally:
            # only reached with work left if this task was cancelled: whether the last
            # transaction landed is unknown, so say so rather than leave callers hanging
            self._fail(
                self._in_flight + self._waiters,
                StoreError(
                    "the group committer stopped before these changes were acknowledged;"
                    " they may or may not have been committed"
                ),
            )

    async def _apply_next_batch(self) -> None:
        changes = list(self._pending.values())
        self._in_flight, self._waiters, self._pending = self._waiters, [], {}
        waiters = self._in_flight
        if changes:
            assert self._loop is not None
            try:
                await self._loop.run_in_executor(self._executor, self._store.apply, changes)
            except Exception as exc:
                self._failures += 1
                self._in_flight = []
                self._fail(waiters, exc)
                return
            self._transactions += 1
            self._changes += len(changes)
            self._largest = max(self._largest, len(changes))
        self._in_flight = []
        self._commits += len(waiters)
        for waiter in waiters:
            # a waiter whose caller was cancelled is already done
            if not waiter.done():
                waiter.set_result(None)

    @staticmethod
    def _fail(waiters: list[asyncio.Future[None]], exc: BaseException) -> None:
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(exc)
