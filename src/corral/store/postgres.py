"""The PostgreSQL backend: the same tables, statements and semantics as SQLite's.

``postgresql://user@host:port/dbname`` (libpq's URL form, so any libpq option works). One
connection, used by one caller at a time, as the `Store` protocol says. A transaction that
`apply` returned from is committed by the server, so it survives the dispatcher; a lost
connection is opened again on the next call, and a failed transaction is rolled back first,
so nothing of it is applied. Needs the ``postgres`` extra (psycopg 3).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import Any

from corral.errors import StoreError
from corral.store import rows
from corral.store.base import Change, Convert, Loaded, Table

_SQL = rows.SQL("%s")
_SECRET = re.compile(r"(://[^:/@]*:)[^@]*@")


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    return _SECRET.sub(r"\1***@", url)


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
        self._where = _redacted(url)
        self._timeout = connect_timeout
        self._conn: Any = None
        self._closed = False
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
                self._conn = self._psycopg.connect(
                    self.url, connect_timeout=max(1, int(self._timeout)), autocommit=True
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

    def apply(self, changes: Sequence[Change]) -> None:
        """Apply ``changes`` in one transaction; see `corral.store.Store.apply`."""
        if not changes:
            return
        statements = rows.prepare(self._where, _SQL, changes)
        conn = self._connection()
        try:
            with conn.transaction(), conn.cursor() as cursor:
                for sql, values in statements:
                    cursor.executemany(sql, values)
        except Exception as exc:  # the driver's, or an encoding error of a value
            raise StoreError(
                f"store {self._where}: a transaction of {len(changes)} changes failed and was"
                f" rolled back, nothing of it applied: {exc}"
            ) from exc

    def close(self) -> None:
        self._closed = True
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                conn.close()
