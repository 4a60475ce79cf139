"""The dispatchers' lease on a real PostgreSQL: epochs, expiry by the database's clock, and
the fence that makes a deposed dispatcher's commits fail."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator

import psycopg
import pytest

from corral.errors import StoreError
from corral.store import PostgresStore, Put, Table, open_store
from corral.store.lease import PostgresLease
from corral.testing.postgres import PostgresServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def url(postgres: PostgresServer) -> str:
    database = postgres.database()
    # the lease's tables come with the store's migrations
    open_store(database).close()
    return database


@pytest.fixture
async def leases(url: str) -> AsyncIterator[list[PostgresLease]]:
    made = [PostgresLease(url, name, {"api": f"http://{name}"}) for name in ("a", "b")]
    yield made
    for lease in made:
        await lease.aclose()


def fenced_store(url: str, epoch: int, lease_duration: float = 30.0) -> PostgresStore:
    store = open_store(url)
    assert isinstance(store, PostgresStore)
    store.fence(epoch, lease_duration)
    return store


async def test_the_first_dispatcher_takes_the_lease_and_the_next_waits_for_it_to_expire(
    leases: list[PostgresLease],
) -> None:
    a, b = leases
    assert await a.read() is None
    assert await a.acquire(30.0) == 1
    assert await b.acquire(30.0) is None
    held = await b.read()
    assert held is not None
    assert (held.holder, held.epoch, held.doc) == ("a", 1, {"api": "http://a"})
    assert 29.0 < held.remaining <= 30.0


async def test_an_expired_lease_is_taken_with_the_next_epoch(leases: list[PostgresLease]) -> None:
    a, b = leases
    assert await a.acquire(0.2) == 1
    assert await b.acquire(0.2) is None
    await asyncio.sleep(0.3)
    assert await b.acquire(30.0) == 2
    assert not await a.renew(1, 30.0), "a deposed holder renewed the lease"
    held = await a.read()
    assert held is not None
    assert (held.holder, held.epoch) == ("b", 2)


async def test_renewing_keeps_the_lease(leases: list[PostgresLease]) -> None:
    a, b = leases
    assert await a.acquire(0.3) == 1
    for _ in range(4):
        await asyncio.sleep(0.1)
        assert await a.renew(1, 0.3)
        assert await b.acquire(0.3) is None


async def test_a_dispatcher_takes_its_own_live_lease_back_in_a_new_epoch(
    leases: list[PostgresLease], url: str
) -> None:
    # a dispatcher restarted on its home: its previous run is gone, whatever the lease says
    a, b = leases
    assert await a.acquire(30.0) == 1
    again = PostgresLease(url, "a", {"api": "http://a-again"})
    try:
        assert await again.acquire(30.0) == 2
    finally:
        await again.aclose()
    assert not await a.renew(1, 30.0), "the previous run's epoch is still good"
    assert await b.acquire(30.0) is None


async def test_a_released_lease_is_taken_at_once(leases: list[PostgresLease]) -> None:
    a, b = leases
    assert await a.acquire(30.0) == 1
    await a.release(1)
    assert await b.acquire(30.0) == 2


async def test_a_deposed_dispatcher_commits_nothing(leases: list[PostgresLease], url: str) -> None:
    a, b = leases
    assert await a.acquire(0.2) == 1
    store = fenced_store(url, 1)
    try:
        store.apply([Put(Table.META, "before", {"by": "a"})])
        await asyncio.sleep(0.3)
        assert await b.acquire(30.0) == 2
        with pytest.raises(StoreError, match=r"deposed .*epoch 1.* epoch 2"):
            store.apply([Put(Table.META, "late", {"by": "a"})])
    finally:
        store.close()
    check = open_store(url)
    try:
        assert set(check.load().tables[Table.META]) == {"before"}
    finally:
        check.close()


async def test_a_takeover_waits_for_the_commit_in_flight(
    leases: list[PostgresLease], url: str
) -> None:
    # The old holder's transaction read the epoch under a share lock; the new holder loads
    # the store after its takeover, so it must see that transaction's writes.
    a, b = leases
    assert await a.acquire(0.1) == 1
    with psycopg.connect(url) as conn:
        conn.execute("SELECT epoch FROM leases WHERE name = 'dispatcher' FOR SHARE")
        await asyncio.sleep(0.2)  # expired while the transaction is open
        takeover = asyncio.create_task(b.acquire(30.0))
        await asyncio.sleep(0.3)
        assert not takeover.done(), "the lease was taken under a commit in flight"
        conn.commit()
    assert await takeover == 2


async def test_a_dispatcher_frozen_mid_transaction_does_not_hold_the_takeover_back(
    leases: list[PostgresLease], url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its transaction holds the share lock of the lease row that a takeover waits for; the
    # database ends it once idle for the lease's duration, frozen dispatcher or not.
    a, b = leases
    assert await a.acquire(0.5) == 1
    store = fenced_store(url, 1, lease_duration=0.5)
    thawed = threading.Event()
    frozen = threading.Event()
    executemany = psycopg.Cursor.executemany

    def freeze(cursor: psycopg.Cursor[object], *args: object, **kwargs: object) -> None:
        frozen.set()
        thawed.wait(30)  # SIGSTOPped, as far as the database can tell
        executemany(cursor, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(psycopg.Cursor, "executemany", freeze)
    commit = asyncio.create_task(asyncio.to_thread(store.apply, [Put(Table.META, "k", {})]))
    try:
        assert await asyncio.to_thread(frozen.wait, 10)
        started = time.monotonic()
        assert await asyncio.wait_for(b.acquire(30.0), 10) == 2
        assert time.monotonic() - started < 5.0
    finally:
        thawed.set()
        with contextlib.suppress(StoreError):
            await commit  # deposed: nothing of it lands
        store.close()
    check = open_store(url)
    try:
        assert "k" not in check.load().tables[Table.META]
    finally:
        check.close()


async def test_dispatchers_are_listed_while_they_are_seen(leases: list[PostgresLease]) -> None:
    a, b = leases
    assert [m.key for m in await a.register(60.0)] == ["a"]
    members = await b.register(60.0)
    assert [(m.key, m.doc) for m in members] == [
        ("a", {"api": "http://a"}),
        ("b", {"api": "http://b"}),
    ]
    await asyncio.sleep(0.3)
    assert [m.key for m in await b.register(0.2)] == ["b"], "a stale dispatcher was listed"
    await b.leave()
    assert [m.key for m in await a.register(60.0)] == ["a"]


async def test_an_unreachable_database_fails_the_call_in_time(postgres: PostgresServer) -> None:
    url = f"postgresql://postgres@127.0.0.1:{postgres.port}/no_such_database"
    lease = PostgresLease(url, "a", {}, timeout=1.0)
    try:
        with pytest.raises(StoreError, match=r"lease on .*no_such_database"):
            await lease.read()
    finally:
        await lease.aclose()
