"""The PostgreSQL backend: the same tables, statements and semantics as SQLite's.

``postgresql://user@host:port/dbname`` (libpq's URL form, so any libpq option works). One
connection, used by one caller at a time, as the `Store` protocol says. A transaction that
`apply` returned from is committed by the server, so it survives the dispatcher; a lost
connection is opened again on the next call, and a failed transaction is rolled back first,
so nothing of it is applied. Needs the ``postgres`` extra (psycopg 3).

Once `fence` is called (by a dispatcher holding the lease of ``corral.store.lease``), every
transaction first checks, under a share lock of the lease row, that the lease is still at
that epoch: the commits of a deposed dispatcher fail and apply nothing.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import Any

from corral.errors import StoreError
from corral.store import rows, schema
from corral.store.base import Change, Convert, Loaded, Table

_SQL = rows.SQL("%s")
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


class PostgresStore:
    """A `corral.store.Store` in a PostgreSQL database."""

    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        try:
            import psycopg
        except ImportError:
            raise StoreError(
                "the PostgreSQL store needs psycopg: pip install 'corral[postgres]'"
            ) from None
        self._psycopg = psycopg
        self.url = url
        self._where = redacted(url)
        self._timeout = connect_timeout
        self._conn: Any = None
        self._closed = False
        self._epoch: int | None = None
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

    def fence(self, epoch: int) -> None:
        """Commit only while the dispatchers' lease is at ``epoch`` (this dispatcher's)."""
        self._epoch = epoch

    def apply(self, changes: Sequence[Change]) -> None:
        """Apply ``changes`` in one transaction; see `corral.store.Store.apply`."""
        if not changes:
            return
        statements = rows.prepare(self._where, _SQL, changes)
        conn = self._connection()
        try:
            with conn.transaction(), conn.cursor() as cursor:
                if self._epoch is not None:
                    self._check_epoch(cursor, len(changes))
                for sql, values in statements:
                    cursor.executemany(sql, values)
        except StoreError:
            raise
        except Exception as exc:  # the driver's, or an encoding error of a value
            raise StoreError(
                f"store {self._where}: a transaction of {len(changes)} changes failed and was"
                f" rolled back, nothing of it applied: {exc}"
            ) from exc

    def _check_epoch(self, cursor: Any, count: int) -> None:
        row = cursor.execute(schema.LEASE_GUARD).fetchone()
        if row is None or int(row[0]) != self._epoch:
            now = "no lease" if row is None else f"epoch {row[0]}"
            raise StoreError(
                f"store {self._where}: this dispatcher was deposed (it held epoch"
                f" {self._epoch}; the lease is at {now}); a transaction of {count} changes"
                " was refused, nothing of it applied"
            )

    def close(self) -> None:
        self._closed = True
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                conn.close()
