"""The store's tables, indexes and migrations, in SQL that SQLite and PostgreSQL both accept.

Every table maps a text key to a JSON document kept as compact text. `Table.PROCESSES` also
keeps three columns copied from its document (``state``, ``round``, ``assigned``) so that
queries by state or by node need not parse JSON; `INDEXED_COLUMNS` is the one place that
says which.

A migration is a list of statements; the database's version is the number of migrations
applied, kept in the one-row ``schema_version`` table (PostgreSQL has no PRAGMA user_version).
Migrations are append-only: an applied one is never edited, a change of shape is a new one.
Statements that take parameters are built by functions taking the backend's placeholder
(``?`` for sqlite3, ``%s`` for psycopg).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from corral.errors import StoreError
from corral.store.base import Table

CREATE_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
READ_VERSION = "SELECT version FROM schema_version"

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the four tables, processes indexed by state and by the node it is assigned to
    (
        "CREATE TABLE definitions (key TEXT NOT NULL PRIMARY KEY, doc TEXT NOT NULL)",
        "CREATE TABLE processes ("
        " key TEXT NOT NULL PRIMARY KEY, doc TEXT NOT NULL,"
        " state INTEGER NOT NULL, round INTEGER NOT NULL, assigned TEXT)",
        "CREATE INDEX processes_state ON processes (state)",
        "CREATE INDEX processes_assigned ON processes (assigned)",
        "CREATE TABLE nodes (key TEXT NOT NULL PRIMARY KEY, doc TEXT NOT NULL)",
        "CREATE TABLE meta (key TEXT NOT NULL PRIMARY KEY, doc TEXT NOT NULL)",
    ),
    # 2: the shared event queues
    ("CREATE TABLE events (key TEXT NOT NULL PRIMARY KEY, doc TEXT NOT NULL)",),
    # 3: the state history of each process (bounded per process) and the audit log
    (
        "CREATE TABLE history (key TEXT NOT NULL PRIMARY KEY, doc TEXT NOT NULL)",
        "CREATE TABLE audit (key TEXT NOT NULL PRIMARY KEY, doc TEXT NOT NULL)",
    ),
    # 4: the active dispatcher's lease and the dispatchers standing by (``corral.store.lease``;
    # used on PostgreSQL only: a SQLite store has one dispatcher, held by a file lock)
    (
        "CREATE TABLE leases ("
        " name TEXT NOT NULL PRIMARY KEY, holder TEXT NOT NULL, epoch BIGINT NOT NULL,"
        " expires DOUBLE PRECISION NOT NULL, doc TEXT NOT NULL)",
        "CREATE TABLE dispatchers ("
        " key TEXT NOT NULL PRIMARY KEY, doc TEXT NOT NULL, seen DOUBLE PRECISION NOT NULL)",
    ),
)

#: the version a database has once every migration has run
SCHEMA_VERSION = len(MIGRATIONS)

#: the one row of ``leases`` the dispatchers contend for (``corral.store.lease``)
DISPATCHER_LEASE = "dispatcher"
#: the epoch of that lease, share-locked: a takeover (which updates the row) waits for the
#: transaction that read it
LEASE_GUARD = f"SELECT epoch FROM leases WHERE name = '{DISPATCHER_LEASE}' FOR SHARE"


@dataclass(frozen=True, slots=True)
class IndexedColumn:
    """A column copied from a field of the document, so that it can be indexed."""

    name: str
    kind: type[int] | type[str]
    #: whether the field may be missing or null in the document
    optional: bool = False


#: the columns each table keeps besides ``key`` and ``doc``, in column order
INDEXED_COLUMNS: Mapping[Table, tuple[IndexedColumn, ...]] = {
    Table.DEFINITIONS: (),
    Table.PROCESSES: (
        IndexedColumn("state", int),
        IndexedColumn("round", int),
        IndexedColumn("assigned", str, optional=True),
    ),
    Table.NODES: (),
    Table.META: (),
    Table.EVENTS: (),
    Table.HISTORY: (),
    Table.AUDIT: (),
}


def set_version_sql(param: str) -> tuple[str, str]:
    """The two statements that record the schema version (a parameter)."""
    return ("DELETE FROM schema_version", f"INSERT INTO schema_version (version) VALUES ({param})")


def select_sql(table: Table) -> str:
    """Every ``(key, doc)`` row of ``table``."""
    return f"SELECT key, doc FROM {table.value}"


def upsert_sql(table: Table, param: str) -> str:
    """Insert or replace one row; parameters are key, doc, then the indexed columns."""
    names = ["key", "doc", *(column.name for column in INDEXED_COLUMNS[table])]
    updates = ", ".join(f"{name} = excluded.{name}" for name in names[1:])
    return (
        f"INSERT INTO {table.value} ({', '.join(names)})"
        f" VALUES ({', '.join(param for _ in names)})"
        f" ON CONFLICT (key) DO UPDATE SET {updates}"
    )


def delete_sql(table: Table, param: str) -> str:
    """Delete one row by key."""
    return f"DELETE FROM {table.value} WHERE key = {param}"


def indexed_values(table: Table, key: str, doc: Mapping[str, Any]) -> tuple[Any, ...]:
    """The indexed column values for ``doc``, checked, in `INDEXED_COLUMNS` order.

    Raises `StoreError` naming the table, key and field when the document lacks a required
    field or holds the wrong type, so that the bad change is found before the transaction.
    """
    values: list[Any] = []
    for column in INDEXED_COLUMNS[table]:
        value = doc.get(column.name)
        if value is None and column.optional:
            values.append(None)
            continue
        # bool is an int subclass, but a state of True is a bug, not a state
        if not isinstance(value, column.kind) or isinstance(value, bool):
            wanted = column.kind.__name__ + (" or null" if column.optional else "")
            raise StoreError(
                f"{table.value}/{key!r}: field {column.name!r} must be {wanted},"
                f" not {type(value).__name__} ({value!r})",
                field=column.name,
            )
        values.append(value)
    return tuple(values)
