"""The SQLite backend: one file, WAL mode, one writer.

Durability is the point: with ``synchronous=FULL`` (the default) a transaction that `apply`
returned from survives a power loss; ``NORMAL`` keeps it across a crash of the process but
may lose the last transactions on power loss, in exchange for fewer fsyncs.

Every failure is raised as `StoreError` with the path and what to do about it, and a failed
transaction is rolled back first, so nothing of it is applied.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from corral.errors import StoreError
from corral.store import rows
from corral.store.base import Change, Convert, Loaded, Table

Synchronous = Literal["FULL", "NORMAL"]

_SQL = rows.SQL("?")

# sqlite's own messages say what broke, not what to do; these say the second half
_HINTS = {
    "file is not a database": "the file exists but is not an SQLite database; "
    "point the store at another path",
    "unable to open database file": "check that the file and its directory are writable",
    "readonly database": "the file or its directory is read-only",
    "database is locked": "another process held the lock past the busy timeout; "
    "is another dispatcher using this store?",
    "disk is full": "free some disk space",
    "disk I/O error": "the disk or file system failed; check the system log",
}


def _explain(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    for needle, hint in _HINTS.items():
        if needle in text:
            return f"{text} ({hint})"
    return text


class SQLiteStore:
    """A `corral.store.Store` in one SQLite file.

    Not for concurrent use: one caller at a time (the connection is opened with
    ``check_same_thread=False`` so that `load` may run on the main thread and `apply` on the
    group committer's writer thread).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "FULL",
        busy_timeout: float = 5.0,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', not {synchronous!r}")
        self.path = Path(path)
        self.synchronous: Synchronous = synchronous
        self._conn: sqlite3.Connection | None = self._open(busy_timeout)

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r}, synchronous={self.synchronous!r})"

    def _open(self, busy_timeout: float) -> sqlite3.Connection:
        if not self.path.parent.is_dir():
            raise StoreError(
                f"cannot open store {self.path}: directory {self.path.parent} does not exist"
            )
        if self.path.is_dir():
            raise StoreError(f"cannot open store {self.path}: it is a directory, not a file")
        try:
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so that the write lock
            # is taken up front and a transaction never fails half-way on lock upgrade;
            # timeout is SQLite's busy_timeout, how long to wait for another process's lock
            conn = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self.path}: {_explain(exc)}") from exc
        try:
            (mode,) = conn.execute("PRAGMA journal_mode=WAL").fetchone()
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"cannot open store {self.path}: the file system refused WAL mode"
                    f" (journal_mode is {mode}); put the store on a local disk"
                )
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            self._migrate(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open store {self.path}: {_explain(exc)}") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows.migrate(conn, str(self.path), _SQL)
            conn.execute("COMMIT")
        except BaseException:
            self._rollback(conn)
            raise

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"store {self.path} is closed")
        return self._conn

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        # after some errors (disk full, I/O) SQLite has already rolled back by itself
        if conn.in_transaction:
            # a failing rollback is not news: the error that led here is the one to report
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    def load(self, convert: Convert | None = None) -> Loaded:
        """Read every table in one read transaction, so the tables agree with each other."""
        conn = self._connection()
        tables: dict[Table, dict[str, dict[str, Any]]] = {}
        try:
            conn.execute("BEGIN")
            for table in Table:
                found = tables[table] = {}
                for key, text in conn.execute(_SQL.select[table]):
                    doc = rows.loads(str(self.path), table, key, text)
                    found[key] = doc if convert is None else convert(table, doc)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback(conn)
            raise StoreError(f"store {self.path}: could not load: {_explain(exc)}") from exc
        except BaseException:
            self._rollback(conn)
            raise
        return Loaded(tables=tables)

    def apply(self, changes: Sequence[Change]) -> None:
        """Apply ``changes`` in one transaction; see `corral.store.Store.apply`."""
        if not changes:
            return
        conn = self._connection()
        statements = rows.prepare(str(self.path), _SQL, changes)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for sql, values in statements:
                conn.executemany(sql, values)
            conn.execute("COMMIT")
        except BaseException as exc:
            self._rollback(conn)
            if not isinstance(exc, Exception):
                raise
            raise StoreError(
                f"store {self.path}: a transaction of {len(changes)} changes failed and was"
                f" rolled back, nothing of it applied: {_explain(exc)}"
            ) from exc

    def free_space(self) -> int | None:
        """Bytes an unprivileged writer may still use on the file system of the store."""
        stats = os.statvfs(self.path.parent)
        return stats.f_bavail * stats.f_frsize

    def close(self) -> None:
        """Close the connection; SQLite checkpoints the WAL into the main file."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()
