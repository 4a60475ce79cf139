"""The dispatchers' lease in PostgreSQL: which one is active, in which epoch, until when.

Several dispatchers may share one PostgreSQL store; one row of ``leases`` says which of them
is active. It names the ``holder``, its ``epoch`` (a number that grows by one at each
takeover) and when the lease ``expires``, in seconds by the *database's* clock, so the
dispatchers' own clocks never have to agree. The holder renews the lease well before it
expires; another dispatcher may take it only once it has expired, and taking it bumps the
epoch. ``PostgresStore.fence(epoch)`` then makes every transaction of the old holder check
the epoch first, under a share lock of the lease row, so a takeover waits for a commit in
flight and every later commit of the deposed dispatcher fails instead of landing.

``dispatchers`` lists every dispatcher, active or standing by, with how agents and clients
reach it (its API URL and agent address), so the active one can tell its agents where to go
when it is gone.

Each call is one short autocommit statement on a connection of the lease's own (the store's
connection belongs to its writer thread), bounded by ``timeout``: a database that does not
answer in time fails the call with `StoreError`, and the next call connects again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from corral.errors import StoreError
from corral.store.postgres import conninfo, import_psycopg, redacted
from corral.store.schema import DISPATCHER_LEASE

_NOW = "EXTRACT(EPOCH FROM clock_timestamp())::float8"

_READ = f"SELECT holder, epoch, expires - {_NOW}, doc FROM leases WHERE name = '{DISPATCHER_LEASE}'"
# Taking an expired lease (or a first one, or one's own) bumps the epoch; another's live
# one is left alone, and of two dispatchers racing for an expired lease the second finds it
# live and gets no row.
_ACQUIRE = (
    "INSERT INTO leases AS l (name, holder, epoch, expires, doc)"
    f" VALUES ('{DISPATCHER_LEASE}', %(holder)s, 1, {_NOW} + %(duration)s, %(doc)s)"
    " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, epoch = l.epoch + 1,"
    " expires = excluded.expires, doc = excluded.doc"
    f" WHERE l.expires <= {_NOW} OR l.holder = excluded.holder"
    " RETURNING epoch"
)
_RENEW = (
    f"UPDATE leases SET expires = {_NOW} + %(duration)s"
    f" WHERE name = '{DISPATCHER_LEASE}' AND holder = %(holder)s AND epoch = %(epoch)s"
    " RETURNING epoch"
)
# expired at once, so that a standby need not wait out the duration
_RELEASE = (
    f"UPDATE leases SET expires = {_NOW} - 1"
    f" WHERE name = '{DISPATCHER_LEASE}' AND holder = %(holder)s AND epoch = %(epoch)s"
)
_REGISTER = (
    f"INSERT INTO dispatchers (key, doc, seen) VALUES (%(holder)s, %(doc)s, {_NOW})"
    " ON CONFLICT (key) DO UPDATE SET doc = excluded.doc, seen = excluded.seen"
)
_MEMBERS = f"SELECT key, doc FROM dispatchers WHERE seen > {_NOW} - %(max_age)s ORDER BY key"
_FORGET_OLD = f"DELETE FROM dispatchers WHERE seen < {_NOW} - %(forget_after)s"
_LEAVE = "DELETE FROM dispatchers WHERE key = %(holder)s"

#: a dispatcher unseen for this long is removed from ``dispatchers``
FORGET_AFTER = 86400.0


@dataclass(frozen=True, slots=True)
class Holder:
    """The lease as one read saw it."""

    holder: str
    epoch: int
    #: seconds until it expires, by the database's clock (0 or less: expired)
    remaining: float
    #: what the holder said of itself when it took the lease (``api``, ``agents``)
    doc: Mapping[str, Any]

    @property
    def expired(self) -> bool:
        return self.remaining <= 0


@dataclass(frozen=True, slots=True)
class Member:
    """A dispatcher seen recently, active or standing by."""

    key: str
    doc: Mapping[str, Any]


class PostgresLease:
    """This dispatcher's side of the lease: read, take, renew and give it up; register.

    ``me`` names this dispatcher, the same across its restarts and never another's: a
    dispatcher may take back its own lease before it expires (its previous run is known to
    be gone). ``doc`` is what it says of itself (``{"api": URL, "agents": "HOST:PORT"}``).
    Every method raises `StoreError` when the database fails or does not answer within
    ``timeout`` seconds.
    """

    def __init__(self, url: str, me: str, doc: Mapping[str, Any], *, timeout: float = 2.0) -> None:
        self._psycopg = import_psycopg()
        self._url = url
        self._where = redacted(url)
        self.me = me
        self._doc = json.dumps(dict(doc), separators=(",", ":"))
        self._timeout = timeout
        self._conn: Any = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"PostgresLease({self._where!r}, me={self.me!r})"

    async def read(self) -> Holder | None:
        """The lease as it is now; None if no dispatcher ever took it."""
        rows = await self._query((_READ, {}))
        if not rows:
            return None
        holder, epoch, remaining, doc = rows[0]
        return Holder(holder, int(epoch), float(remaining), _loads(doc))

    async def acquire(self, duration: float) -> int | None:
        """Take the lease if it is free, expired or ours; the new epoch, or None if another
        dispatcher holds it."""
        args = {"holder": self.me, "duration": duration, "doc": self._doc}
        rows = await self._query((_ACQUIRE, args))
        return int(rows[0][0]) if rows else None

    async def renew(self, epoch: int, duration: float, *, within: float | None = None) -> bool:
        """Extend the lease by ``duration`` from now; False if it is no longer ours.

        ``within`` (seconds) shortens the usual time limit: the lease may run out sooner.
        """
        args = {"holder": self.me, "epoch": epoch, "duration": duration}
        return bool(await self._query((_RENEW, args), within=within))

    async def release(self, epoch: int) -> None:
        """Give the lease up (expire it now), if it is still ours at ``epoch``."""
        await self._query((_RELEASE, {"holder": self.me, "epoch": epoch}))

    async def register(self, max_age: float) -> list[Member]:
        """Say that this dispatcher is alive; every dispatcher seen within ``max_age`` s."""
        rows = await self._query(
            (_REGISTER, {"holder": self.me, "doc": self._doc}),
            (_FORGET_OLD, {"forget_after": FORGET_AFTER}),
            (_MEMBERS, {"max_age": max_age}),
        )
        return [Member(key, _loads(doc)) for key, doc in rows]

    async def leave(self) -> None:
        """Remove this dispatcher from the list (on a clean exit)."""
        await self._query((_LEAVE, {"holder": self.me}))

    async def aclose(self) -> None:
        await self._drop()

    # -- internals ------------------------------------------------------------------------

    async def _query(
        self, *statements: tuple[str, Mapping[str, Any]], within: float | None = None
    ) -> list[Any]:
        """Run ``statements`` in order, each in its own autocommit; the rows of the last."""
        limit = self._timeout if within is None else min(within, self._timeout)
        async with self._lock:
            conn, self._conn = self._conn, None
            work = asyncio.create_task(self._execute(conn, statements))
            done, _ = await asyncio.wait({work}, timeout=limit)
            if not done:
                # Given up without waiting: psycopg would first try, for seconds, to cancel
                # the statement over the very link that stopped answering.
                work.add_done_callback(_close_abandoned)
                work.cancel()
                raise StoreError(f"lease on {self._where}: no answer within {limit:.3g}s")
            try:
                self._conn, rows = work.result()
            except self._psycopg.Error as exc:
                raise StoreError(f"lease on {self._where}: {exc}") from exc
            return rows

    async def _execute(
        self, conn: Any, statements: tuple[tuple[str, Mapping[str, Any]], ...]
    ) -> tuple[Any, list[Any]]:
        """Connect if need be and run ``statements``; the connection, and the rows."""
        if conn is None or conn.closed:
            info = conninfo(self._url, self._timeout)
            conn = await self._psycopg.AsyncConnection.connect(info, autocommit=True)
        try:
            rows: list[Any] = []
            for sql, args in statements:
                cursor = await conn.execute(sql, args)
                rows = await cursor.fetchall() if cursor.description else []
        except self._psycopg.Error:
            # a connection that failed a statement is in an unknown state
            with contextlib.suppress(Exception):
                await conn.close()
            raise
        return conn, rows

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


def _close_abandoned(work: asyncio.Task[tuple[Any, list[Any]]]) -> None:
    """Close the connection of a call given up on, whenever it ends."""
    if work.cancelled() or work.exception() is not None:
        return  # psycopg closed it, or it never opened
    conn, _ = work.result()
    conn.pgconn.finish()


def _loads(text: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}
