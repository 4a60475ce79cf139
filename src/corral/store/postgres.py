"""The PostgreSQL backend: the same tables, statements and semantics as SQLite's.

``postgresql://user@host:port/dbname`` (libpq's URL form, so any libpq option works). One
connection, used by one caller at a time, as the `Store` protocol says. A transaction that
`apply` returned from is committed by the server, so it survives the dispatcher; a lost
connection is opened again on the next call, and a failed transaction is rolled back first,
so nothing of it is applied. Needs the ``postgres`` extra (psycopg 3).

A server that goes away (restarted, failed over, the network cut) does not stop the
dispatcher at once: `apply` reconnects and runs the same transaction again for up to
``outage_grace`` seconds. That is safe because every change is a whole-row upsert or a
delete, so a transaction whose COMMIT was lost with the connection may run twice and leave
the same rows. Past the grace the error stands, and the dispatcher stops.

Once `fence` is called (by a dispatcher holding the lease of ``corral.store.lease``), every
transaction first checks, under a share lock of the lease row, that the lease is still at
that epoch: the commits of a deposed dispatcher fail at once, are not tried again, and
apply nothing.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

from corral.errors import StoreError
from corral.store import rows, schema
from corral.store.base import Change, Convert, Loaded, Table

log = logging.getLogger("corral.store")

_SQL = rows.SQL("%s")
#: how long `apply` keeps trying to reach a server that went away
OUTAGE_GRACE = 30.0
_SECRET = re.compile(r"(://[^:/@]*:)[^@]*@")


#: libpq settings used unless the URL sets them: a dead server or a cut link fails a
#: statement within seconds instead of the kernel's many minutes of retransmissions, so a
#: dispatcher that lost its database notices (and fences itself) in time
_LIVENESS = {
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "tcp_user_timeout": "10000",
}


def import_psycopg() -> Any:
    """psycopg, or a `StoreError` saying which extra installs it."""
    try:
        import psycopg
    except ImportError:
        raise StoreError(
            "the PostgreSQL store needs psycopg: pip install 'corral[postgres]'"
        ) from None
    return psycopg


def redacted(url: str) -> str:
    """The URL without its password, for messages."""
    return _SECRET.sub(r"\1***@", url)


def conninfo(url: str, timeout: float) -> str:
    """What to connect with: the URL's settings, then the liveness defaults and ``timeout``."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    options = conninfo_to_dict(url)
    for key, value in {**_LIVENESS, "connect_timeout": str(max(1, round(timeout)))}.items():
        options.setdefault(key, value)
    return make_conninfo("", **options)


class _Deposed(StoreError):
    """A fenced transaction found the lease at another epoch: never worth trying again."""


class PostgresStore:
    """A `corral.store.Store` in a PostgreSQL database."""

    def __init__(
        self, url: str, *, connect_timeout: float = 10.0, outage_grace: float = OUTAGE_GRACE
    ) -> None:
        self._psycopg = import_psycopg()
        self.url = url
        self._where = redacted(url)
        self._timeout = connect_timeout
        self._outage_grace = outage_grace
        self._conn: Any = None
        self._closed = False
        self._epoch: int | None = None
        #: idle_in_transaction_session_timeout once fenced (see fence)
        self._idle_limit: str | None = None
        conn = self._connection()
        try:
            self._migrate(conn)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"PostgresStore({self._where!r})"

    def _connection(self) -> Any:
        if self._closed:
            raise StoreError(f"store {self._where} is closed")
        if self._conn is None or self._conn.closed:
            try:
                info = conninfo(self.url, self._timeout)
                self._conn = self._psycopg.connect(info, autocommit=True)
                if self._idle_limit is not None:
                    self._conn.execute(
                        "SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
                        (self._idle_limit,),
                    )
            except self._psycopg.Error as exc:
                raise StoreError(f"cannot open store {self._where}: {exc}") from exc
        return self._conn

    def _migrate(self, conn: Any) -> None:
        try:
            with conn.transaction():
                # one migrating dispatcher at a time: the others wait, then find it done
                conn.execute("SELECT pg_advisory_xact_lock(7480)")
                rows.migrate(conn, self._where, _SQL)
        except self._psycopg.Error as exc:
            raise StoreError(f"cannot open store {self._where}: {exc}") from exc

    def load(self, convert: Convert | None = None) -> Loaded:
        """Read every table in one repeatable-read transaction: the tables agree."""
        conn = self._connection()
        tables: dict[Table, dict[str, Any]] = {}
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                for table in Table:
                    found = tables[table] = {}
                    for key, text in conn.execute(_SQL.select[table]):
                        doc = rows.loads(self._where, table, key, text)
                        found[key] = doc if convert is None else convert(table, doc)
        except self._psycopg.Error as exc:
            raise StoreError(f"store {self._where}: could not load: {exc}") from exc
        return Loaded(tables=tables)

    def fence(self, epoch: int, lease_duration: float) -> None:
        """Commit only while the dispatchers' lease is at ``epoch`` (this dispatcher's).

        A transaction checks the epoch under a share lock of the lease row, which a standby
        taking the lease over waits for. Should this dispatcher freeze in the middle of a
        transaction (SIGSTOP, a host that hangs), PostgreSQL ends the transaction once it
        has been idle for ``lease_duration``: the lock never outlives the lease, and the
        takeover never waits for a dispatcher that may never come back.
        """
        self._epoch = epoch
        self._idle_limit = (
            f"{max(1, round(lease_duration * 1000))}ms" if lease_duration > 0 else None
        )
        self._drop_connection()  # the next one is opened with the limit

    def apply(self, changes: Sequence[Change]) -> None:
        """Apply ``changes`` in one transaction; see `corral.store.Store.apply`."""
        if not changes:
            return
        statements = rows.prepare(self._where, _SQL, changes)
        deadline = time.monotonic() + self._outage_grace
        delay = 0.05
        while True:
            try:
                self._transact(statements, len(changes))
            except _Deposed:
                raise
            except (self._psycopg.OperationalError, StoreError) as exc:
                # The server is unreachable or went away mid-transaction: try again on a
                # new connection until the grace runs out.
                if self._closed:
                    raise
                if time.monotonic() + delay > deadline:
                    raise StoreError(
                        f"store {self._where}: unreachable for {self._outage_grace:g} s, a"
                        f" transaction of {len(changes)} changes is not committed: {exc}"
                    ) from exc
                if delay == 0.05:
                    log.warning("store %s unreachable, retrying: %s", self._where, exc)
                self._drop_connection()
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except Exception as exc:  # the driver's, or an encoding error of a value
                raise self._failed(changes, exc) from exc
            else:
                if delay > 0.05:
                    log.warning("store %s reachable again", self._where)
                return

    def _failed(self, changes: Sequence[Change], exc: BaseException) -> StoreError:
        return StoreError(
            f"store {self._where}: a transaction of {len(changes)} changes failed and was"
            f" rolled back, nothing of it applied: {exc}"
        )

    def _transact(self, statements: rows.Statements, count: int) -> None:
        conn = self._connection()
        with conn.transaction(), conn.cursor() as cursor:
            if self._epoch is not None:
                self._check_epoch(cursor, count)
            for sql, values in statements:
                cursor.executemany(sql, values)

    def _check_epoch(self, cursor: Any, count: int) -> None:
        row = cursor.execute(schema.LEASE_GUARD).fetchone()
        if row is None or int(row[0]) != self._epoch:
            now = "no lease" if row is None else f"epoch {row[0]}"
            raise _Deposed(
                f"store {self._where}: this dispatcher was deposed (it held epoch"
                f" {self._epoch}; the lease is at {now}); a transaction of {count} changes"
                " was refused, nothing of it applied"
            )

    def _drop_connection(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                conn.close()

    def free_space(self) -> int | None:
        """Unknown: the database's disk belongs to its server."""
        return None

    def close(self) -> None:
        self._closed = True
        self._drop_connection()
