"""GroupCommitter against a recording store: batching, coalescing, errors and shutdown."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from typing import Any

import pytest

from corral.errors import StoreError
from corral.store import Change, Delete, GroupCommitter, Loaded, Put, Store, Table


class RecordingStore:
    """A Store that records each transaction and can hold one open until released.

    With ``hold()`` the next ``apply`` blocks on the writer thread, which is how a test
    keeps a transaction "in flight" while it enqueues more commits.
    """

    def __init__(self) -> None:
        self.batches: list[list[Change]] = []
        self.threads: list[str] = []
        self.poison: set[str] = set()
        self.entered = threading.Event()
        self._gate = threading.Event()
        self._gate.set()

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def load(self) -> Loaded:
        return Loaded(tables={table: {} for table in Table})

    def apply(self, changes: Sequence[Change]) -> None:
        self.threads.append(threading.current_thread().name)
        self.entered.set()
        assert self._gate.wait(10), "the test never released the held transaction"
        bad = sorted(self.poison & {change.key for change in changes})
        if bad:
            raise StoreError(f"refused {bad}")
        self.batches.append(list(changes))

    def free_space(self) -> int | None:
        return None

    def close(self) -> None:
        pass


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


def put(key: str, value: int = 0) -> Put:
    return Put(Table.META, key, {"value": value})


async def started(store: Store) -> GroupCommitter:
    committer = GroupCommitter(store)
    await committer.start()
    return committer


async def wait_in_flight(store: RecordingStore) -> None:
    """Return once the writer thread is inside ``apply``."""
    assert await asyncio.to_thread(store.entered.wait, 10)


def test_recording_store_satisfies_the_store_protocol() -> None:
    store: Store = RecordingStore()
    assert store.load().tables.keys() == set(Table)


def test_a_lone_commit_is_one_transaction_on_the_dedicated_thread() -> None:
    store = RecordingStore()

    async def main() -> None:
        committer = await started(store)
        await committer.commit([put("a")])
        assert store.batches == [[put("a")]]
        await committer.aclose()
        stats = committer.statistics()
        assert (stats.commits, stats.transactions, stats.changes) == (1, 1, 1)

    run(main())
    assert store.threads[0].startswith("corral-store")


def test_commits_made_while_a_transaction_is_in_flight_share_the_next_one() -> None:
    store = RecordingStore()

    async def main() -> None:
        committer = await started(store)
        store.hold()
        first = committer.commit_nowait([put("a")])
        await wait_in_flight(store)
        later = [committer.commit_nowait([put(f"b{i}")]) for i in range(5)]
        assert not first.done()
        store.release()
        await asyncio.gather(first, *later)
        await committer.aclose()

    run(main())
    assert store.batches == [[put("a")], [put(f"b{i}") for i in range(5)]]


def test_a_thousand_concurrent_commits_take_a_handful_of_transactions() -> None:
    store = RecordingStore()

    async def main() -> None:
        committer = await started(store)

        async def worker(i: int) -> None:
            for round_ in range(3):
                await committer.commit([put(f"k{i}", round_)])

        await asyncio.gather(*(worker(i) for i in range(1000)))
        await committer.aclose()
        stats = committer.statistics()
        assert stats.commits == 3000
        assert stats.changes == 3000
        # without grouping this would be 3000; each round of the workers lands together
        assert stats.transactions <= 10
        assert stats.largest_batch >= 500

    run(main())
    final = {change.key: change for batch in store.batches for change in batch}
    assert final == {f"k{i}": put(f"k{i}", 2) for i in range(1000)}


def test_changes_to_one_key_in_a_pending_batch_coalesce_to_the_last() -> None:
    store = RecordingStore()

    async def main() -> None:
        committer = await started(store)
        store.hold()
        committer.commit_nowait([put("warm-up")])
        await wait_in_flight(store)
        futures = [
            committer.commit_nowait([put("a", 1), put("a", 2)]),
            committer.commit_nowait([put("b", 1)]),
            committer.commit_nowait([Delete(Table.META, "b")]),
            committer.commit_nowait([put("a", 3)]),
            # same key in another table is another document
            committer.commit_nowait([Put(Table.NODES, "a", {"value": 9})]),
        ]
        store.release()
        await asyncio.gather(*futures)
        await committer.aclose()
        assert committer.statistics().changes == 4

    run(main())
    assert store.batches[1] == [
        put("a", 3),
        Delete(Table.META, "b"),
        Put(Table.NODES, "a", {"value": 9}),
    ]


def test_a_failed_transaction_fails_every_commit_in_it_and_later_batches_still_run() -> None:
    store = RecordingStore()
    store.poison.add("bad")

    async def main() -> None:
        committer = await started(store)
        store.hold()
        committer.commit_nowait([put("before")])
        await wait_in_flight(store)
        doomed = [committer.commit_nowait([put("bad")]), committer.commit_nowait([put("ok")])]
        store.release()
        results = await asyncio.gather(*doomed, return_exceptions=True)
        assert all(isinstance(result, StoreError) for result in results)
        assert "refused ['bad']" in str(results[1])
        await committer.commit([put("after")])
        await committer.aclose()
        stats = committer.statistics()
        assert (stats.transactions, stats.failures, stats.commits) == (2, 1, 2)

    run(main())
    assert store.batches == [[put("before")], [put("after")]]


def test_aclose_flushes_commits_nobody_awaited() -> None:
    store = RecordingStore()

    async def main() -> None:
        committer = await started(store)
        store.hold()
        futures = [committer.commit_nowait([put(f"k{i}")]) for i in range(3)]
        await wait_in_flight(store)
        futures += [committer.commit_nowait([put(f"k{i}")]) for i in range(3, 6)]
        store.release()
        await committer.aclose()
        assert all(future.done() and future.result() is None for future in futures)
        with pytest.raises(StoreError, match="closed"):
            committer.commit_nowait([put("late")])
        await committer.aclose()  # a second close is harmless

    run(main())
    assert [change.key for batch in store.batches for change in batch] == [
        f"k{i}" for i in range(6)
    ]


def test_an_empty_commit_waits_for_everything_enqueued_before_it() -> None:
    store = RecordingStore()

    async def main() -> None:
        committer = await started(store)
        store.hold()
        first = committer.commit_nowait([put("a")])
        await wait_in_flight(store)
        barrier = committer.commit_nowait([])
        store.release()
        await barrier
        assert first.done()
        await committer.aclose()
        # the barrier needed no transaction of its own
        assert committer.statistics().transactions == 1

    run(main())


def test_cancelling_a_caller_stops_its_wait_but_not_the_commit() -> None:
    store = RecordingStore()

    async def main() -> None:
        committer = await started(store)
        store.hold()
        waiting = asyncio.create_task(committer.commit([put("a")]))
        await wait_in_flight(store)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        store.release()
        await committer.commit([put("b")])
        await committer.aclose()

    run(main())
    assert store.batches == [[put("a")], [put("b")]]


def test_committing_before_start_is_a_usage_error() -> None:
    async def main() -> None:
        committer = GroupCommitter(RecordingStore())
        with pytest.raises(RuntimeError, match="start"):
            committer.commit_nowait([put("a")])

    run(main())
