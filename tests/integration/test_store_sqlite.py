"""The store contract against both real backends, plus what is particular to SQLite.

The tests taking ``store`` or ``store_url`` are the conformance suite: they run on SQLite and
on a real PostgreSQL (``store_url`` in conftest.py).
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from corral.errors import StoreError
from corral.store import Delete, GroupCommitter, Put, SQLiteStore, Store, Table, open_store, schema


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    yield opened
    opened.close()


def process(state: int, round_: int = 1, assigned: str | None = None) -> dict[str, object]:
    return {"state": state, "round": round_, "assigned": assigned, "command": ["sleep", "1"]}


EVERY_TABLE = [
    Put(Table.DEFINITIONS, "def-1", {"name": "sleeper", "argv": ["sleep", 1], "nested": {"a": []}}),
    Put(Table.PROCESSES, "p-1", process(500, 2, "node-1")),
    Put(Table.PROCESSES, "p-2", process(300)),
    Put(Table.NODES, "node-1", {"state": "busy", "labels": {"zone": "é-ünïcode"}}),
    Put(Table.META, "epoch", {"value": 7}),
    Put(Table.EVENTS, "00000000000000000001", {"q": "main", "n": "next_file", "a": "{}"}),
    Put(Table.HISTORY, "p-1 2 500", {"u": "p-1", "r": 2, "s": 500, "t": 1.5}),
    Put(Table.AUDIT, "00000000000000000001", {"actor": "api token", "action": "x"}),
]


def test_a_new_store_loads_every_table_empty(store: Store) -> None:
    assert store.load().tables == {table: {} for table in Table}


def test_every_table_round_trips(store: Store) -> None:
    store.apply(EVERY_TABLE)
    tables = store.load().tables
    for change in EVERY_TABLE:
        assert tables[change.table][change.key] == change.doc
    assert sum(len(rows) for rows in tables.values()) == len(EVERY_TABLE)


def test_put_replaces_and_delete_removes(store: Store) -> None:
    store.apply(EVERY_TABLE)
    store.apply(
        [
            Put(Table.PROCESSES, "p-2", process(400, 1, "node-1")),
            Delete(Table.PROCESSES, "p-1"),
            Delete(Table.NODES, "never-existed"),
        ]
    )
    processes = store.load().tables[Table.PROCESSES]
    assert processes == {"p-2": process(400, 1, "node-1")}


def test_the_last_change_to_a_key_in_one_transaction_wins(store: Store) -> None:
    store.apply(
        [
            Put(Table.META, "gone", {"v": 1}),
            Delete(Table.META, "gone"),
            Delete(Table.META, "back"),
            Put(Table.META, "back", {"v": 2}),
            Put(Table.META, "back", {"v": 3}),
        ]
    )
    assert store.load().tables[Table.META] == {"back": {"v": 3}}


def test_a_document_that_is_not_json_leaves_the_whole_batch_unapplied(store: Store) -> None:
    store.apply([Put(Table.META, "kept", {"v": 0})])
    with pytest.raises(StoreError, match=r"definitions/'bad'.*not JSON-serialisable"):
        store.apply(
            [
                Put(Table.META, "kept", {"v": 1}),
                Put(Table.DEFINITIONS, "bad", {"argv": {1, 2}}),
                Put(Table.NODES, "n", {}),
            ]
        )
    assert store.load().tables == {
        Table.DEFINITIONS: {},
        Table.PROCESSES: {},
        Table.NODES: {},
        Table.META: {"kept": {"v": 0}},
        Table.EVENTS: {},
        Table.HISTORY: {},
        Table.AUDIT: {},
    }


def test_a_failure_inside_the_transaction_rolls_back_what_it_had_written(store: Store) -> None:
    # a lone surrogate cannot be encoded for the database, so the failure comes from the
    # driver after the statements for the other tables have already run
    with pytest.raises(StoreError, match="rolled back"):
        store.apply([*EVERY_TABLE, Delete(Table.META, "\ud800")])
    assert store.load().tables == {table: {} for table in Table}
    store.apply(EVERY_TABLE)  # the store is still usable
    assert store.load().tables[Table.META] == {"epoch": {"value": 7}}


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"round": 1}, "state"),
        ({"state": "RUNNING", "round": 1}, "state"),
        ({"state": 500}, "round"),
        ({"state": 500, "round": True}, "round"),
        ({"state": 500, "round": 1, "assigned": 3}, "assigned"),
    ],
)
def test_a_process_doc_without_its_indexed_fields_is_refused(
    store: Store, doc: dict[str, object], field: str
) -> None:
    with pytest.raises(StoreError, match=f"processes/'p'.*{field}") as caught:
        store.apply([Put(Table.PROCESSES, "p", doc)])
    assert caught.value.field == field
    assert store.load().tables[Table.PROCESSES] == {}


def test_nan_is_refused_because_it_is_not_json(store: Store) -> None:
    with pytest.raises(StoreError, match="not JSON-serialisable"):
        store.apply([Put(Table.META, "m", {"v": float("nan")})])


def test_data_survives_close_and_reopen(store_url: str) -> None:
    first = open_store(store_url)
    first.apply(EVERY_TABLE)
    first.close()
    first.close()  # twice is harmless
    with pytest.raises(StoreError, match="closed"):
        first.apply(EVERY_TABLE)
    again = open_store(store_url)
    try:
        assert again.load().tables[Table.PROCESSES]["p-1"] == process(500, 2, "node-1")
    finally:
        again.close()


def execute(store_url: str, *statements: str) -> list[tuple[object, ...]]:
    """Run SQL behind the store's back (as another corral would); the last one's rows."""
    rows: list[tuple[object, ...]] = []
    if store_url.startswith("sqlite:"):
        with sqlite3.connect(store_url.removeprefix("sqlite://")) as conn:
            for statement in statements:
                rows = conn.execute(statement).fetchall()
        conn.close()
    else:
        with psycopg.connect(store_url, autocommit=True) as pg:
            for statement in statements:
                cursor = pg.execute(statement)
                rows = cursor.fetchall() if cursor.description else []
    return rows


def test_a_store_from_a_newer_corral_is_refused(store_url: str) -> None:
    open_store(store_url).close()
    execute(store_url, f"UPDATE schema_version SET version = {schema.SCHEMA_VERSION + 1}")
    newer = rf"schema version is {schema.SCHEMA_VERSION + 1}, newer than this corral's"
    with pytest.raises(StoreError, match=rf"{newer} {schema.SCHEMA_VERSION}; upgrade corral"):
        open_store(store_url)


def test_a_store_of_the_previous_version_is_migrated_on_open(store_url: str) -> None:
    opened = open_store(store_url)
    opened.apply([Put(Table.META, "kept", {"v": 1})])
    opened.close()
    # undo the newest migration, as if the store were written by the previous corral
    created = [s.split()[2] for s in schema.MIGRATIONS[-1] if s.startswith("CREATE TABLE")]
    execute(
        store_url,
        *(f"DROP TABLE {name}" for name in created),
        f"UPDATE schema_version SET version = {schema.SCHEMA_VERSION - 1}",
    )
    again = open_store(store_url)
    try:
        assert again.load().tables[Table.META] == {"kept": {"v": 1}}
    finally:
        again.close()
    assert execute(store_url, "SELECT version FROM schema_version") == [(schema.SCHEMA_VERSION,)]
    for name in created:
        assert execute(store_url, f"SELECT COUNT(*) FROM {name}") == [(0,)]


def test_group_commit_over_the_real_store(store: Store) -> None:
    async def main() -> None:
        committer = GroupCommitter(store)
        await committer.start()
        await asyncio.gather(
            *(
                committer.commit([Put(Table.PROCESSES, f"p{i}", process(200, i))])
                for i in range(200)
            )
        )
        with pytest.raises(StoreError, match="not JSON-serialisable"):
            await committer.commit([Put(Table.META, "bad", {"v": object()})])
        await committer.commit([Delete(Table.PROCESSES, "p0")])
        await committer.aclose()

    asyncio.run(main())
    processes = store.load().tables[Table.PROCESSES]
    assert len(processes) == 199
    assert processes["p199"]["round"] == 199


# -- SQLite in particular -------------------------------------------------------------------


def sqlite_file(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


def test_the_file_records_its_schema_version_and_the_indexed_columns(tmp_path: Path) -> None:
    SQLiteStore(sqlite_file(tmp_path)).close()
    with sqlite3.connect(sqlite_file(tmp_path)) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [
            (schema.SCHEMA_VERSION,)
        ]
        columns = [row[1] for row in conn.execute("PRAGMA table_info(processes)")]
        indexed = [column.name for column in schema.INDEXED_COLUMNS[Table.PROCESSES]]
        assert columns == ["key", "doc", *indexed]
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(processes)")}
        assert {"processes_state", "processes_assigned"} <= indexes
    conn.close()


def test_indexed_columns_follow_the_document(tmp_path: Path) -> None:
    store = SQLiteStore(sqlite_file(tmp_path))
    store.apply([Put(Table.PROCESSES, "p", process(350, 1, "node-1"))])
    store.apply([Put(Table.PROCESSES, "p", {"state": 500, "round": 2, "other": 1})])
    store.close()
    with sqlite3.connect(sqlite_file(tmp_path)) as conn:
        rows = conn.execute("SELECT key, doc, state, round, assigned FROM processes").fetchall()
    conn.close()
    assert rows == [("p", '{"state":500,"round":2,"other":1}', 500, 2, None)]


def test_wal_mode_and_full_synchronous_by_default(tmp_path: Path) -> None:
    full = SQLiteStore(sqlite_file(tmp_path))
    normal = open_store(f"sqlite:///{tmp_path}/other.db?synchronous=normal")
    try:
        assert isinstance(normal, SQLiteStore)
        # synchronous is a per-connection setting, so only the store's own connection shows it
        pragma = "PRAGMA synchronous"
        assert full._conn is not None
        assert normal._conn is not None
        assert full._conn.execute(pragma).fetchone() == (2,)
        assert normal._conn.execute(pragma).fetchone() == (1,)
        assert full._conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        full.close()
        normal.close()


def test_a_missing_directory_is_named_in_the_error(tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "store.db"
    with pytest.raises(StoreError, match=rf"{re.escape(str(path))}.*directory .* does not exist"):
        open_store(f"sqlite:///{path}")


def test_a_file_that_is_not_a_database_is_named_in_the_error(tmp_path: Path) -> None:
    path = sqlite_file(tmp_path)
    path.write_bytes(b"these are not the bytes of an SQLite database, " * 100)
    with pytest.raises(StoreError, match=rf"{re.escape(str(path))}.*not a database"):
        SQLiteStore(path)


def test_a_directory_is_not_a_store_file(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="is a directory"):
        SQLiteStore(tmp_path)


def test_a_writer_lock_held_elsewhere_fails_with_a_hint(tmp_path: Path) -> None:
    store = SQLiteStore(sqlite_file(tmp_path), busy_timeout=0.05)
    other = sqlite3.connect(sqlite_file(tmp_path), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError, match=r"database is locked.*another dispatcher"):
            store.apply([Put(Table.META, "m", {})])
        other.execute("ROLLBACK")
        store.apply([Put(Table.META, "m", {})])
    finally:
        other.close()
        store.close()


def test_a_store_of_an_older_schema_is_migrated_keeping_its_rows(tmp_path: Path) -> None:
    # a store as corral left it before the history and audit tables existed (version 2)
    with sqlite3.connect(sqlite_file(tmp_path)) as conn:
        conn.execute(schema.CREATE_VERSION_TABLE)
        for migration in schema.MIGRATIONS[:2]:
            for statement in migration:
                conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version) VALUES (2)")
        conn.execute("INSERT INTO meta (key, doc) VALUES ('pool', '{\"id\":\"abc\"}')")
    conn.close()
    store = SQLiteStore(sqlite_file(tmp_path))
    store.apply([Put(Table.AUDIT, "00000000000000000001", {"actor": "api token"})])
    tables = store.load().tables
    store.close()
    assert tables[Table.META] == {"pool": {"id": "abc"}}
    assert tables[Table.HISTORY] == {}
    assert tables[Table.AUDIT] == {"00000000000000000001": {"actor": "api token"}}
    with sqlite3.connect(sqlite_file(tmp_path)) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [
            (schema.SCHEMA_VERSION,)
        ]
    conn.close()
