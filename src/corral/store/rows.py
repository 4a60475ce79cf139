"""Documents to rows and back, the same for every SQL backend.

A backend names itself (``where``: its path or URL, for error messages) and its placeholder;
the statements come from ``schema``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

from corral.errors import StoreError
from corral.store import schema
from corral.store.base import Change, Put, Table

Statements = list[tuple[str, list[tuple[Any, ...]]]]


class SQL:
    """One backend's statements for every table, for its placeholder."""

    def __init__(self, param: str) -> None:
        self.param = param
        self.upsert = {table: schema.upsert_sql(table, param) for table in Table}
        self.delete = {table: schema.delete_sql(table, param) for table in Table}
        self.select = {table: schema.select_sql(table) for table in Table}


class Executes(Protocol):
    """What sqlite3's and psycopg's connections both offer."""

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Any: ...


def migrate(conn: Executes, where: str, sql: SQL) -> None:
    """Bring the schema up to date, inside the caller's transaction.

    Raises `StoreError` for a schema newer than this corral knows: an older corral must
    not write to it.
    """
    conn.execute(schema.CREATE_VERSION_TABLE)
    row = conn.execute(schema.READ_VERSION).fetchone()
    current = 0 if row is None else int(row[0])
    if current > schema.SCHEMA_VERSION:
        raise StoreError(
            f"cannot open store {where}: its schema version is {current}, newer"
            f" than this corral's {schema.SCHEMA_VERSION}; upgrade corral"
        )
    for migration in schema.MIGRATIONS[current:]:
        for statement in migration:
            conn.execute(statement)
    if current != schema.SCHEMA_VERSION:
        clear, insert = schema.set_version_sql(sql.param)
        conn.execute(clear)
        conn.execute(insert, (schema.SCHEMA_VERSION,))


#: allow_nan=False: NaN is not JSON, and PostgreSQL's json types would refuse it. One
#: encoder for every document: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def dumps(doc: object) -> str:
    return _ENCODER.encode(doc)


def loads(where: str, table: Table, key: str, text: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise StoreError(
            f"store {where}: {table.value}/{key!r} holds invalid JSON ({exc});"
            " the store was changed outside corral"
        ) from exc
    if not isinstance(doc, dict):
        raise StoreError(
            f"store {where}: {table.value}/{key!r} holds a JSON {type(doc).__name__},"
            " not an object; the store was changed outside corral"
        )
    return doc


def prepare(where: str, sql: SQL, changes: Sequence[Change]) -> Statements:
    """Group ``changes`` by statement, so that each statement runs once with executemany.

    Grouping reorders the changes, which is only sound when each key appears once, so
    the last change to a key is kept first; changes to different keys commute.
    """
    latest: dict[tuple[Table, str], Change] = {}
    for change in changes:
        latest[change.table, change.key] = change
    upserts: dict[Table, list[tuple[Any, ...]]] = {}
    deletes: dict[Table, list[tuple[Any, ...]]] = {}
    for change in latest.values():
        table, key = change.table, change.key
        if isinstance(change, Put):
            try:
                text = dumps(change.doc)
            except (TypeError, ValueError) as exc:
                raise StoreError(
                    f"store {where}: the document for {table.value}/{key!r} is not"
                    f" JSON-serialisable ({exc}); nothing of the transaction was applied"
                ) from exc
            row = (key, text, *schema.indexed_values(table, key, change.doc))
            upserts.setdefault(table, []).append(row)
        else:
            deletes.setdefault(table, []).append((key,))
    return [(sql.upsert[table], rows) for table, rows in upserts.items()] + [
        (sql.delete[table], rows) for table, rows in deletes.items()
    ]
