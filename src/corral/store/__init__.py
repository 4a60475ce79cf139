"""The durable truth: tables of JSON documents behind the small `Store` protocol.

The store owns persistence only: tables, keys, documents, all-or-nothing transactions, the
schema and its migrations, and group commit. It knows nothing of processes or nodes and
imports nothing from corral but `corral.errors`, so that each backend (SQLite, PostgreSQL)
is tested alone, against one conformance suite. `open_store(url)` picks the backend from the URL.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl

from corral.errors import InvalidRequest
from corral.store.base import Change, Convert, Delete, Loaded, Put, Store, Table
from corral.store.group_commit import CommitStatistics, GroupCommitter
from corral.store.postgres import PostgresStore
from corral.store.sqlite import SQLiteStore, Synchronous

__all__ = [
    "Change",
    "CommitStatistics",
    "Convert",
    "Delete",
    "GroupCommitter",
    "Loaded",
    "PostgresStore",
    "Put",
    "SQLiteStore",
    "Store",
    "Table",
    "open_store",
    "supports_lease",
]

_SYNCHRONOUS: dict[str, Synchronous] = {"FULL": "FULL", "NORMAL": "NORMAL"}
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_SUPPORTED = (
    "supported: sqlite:///absolute/path.db, sqlite:relative/path.db,"
    " a plain path ending in .db or .sqlite, or postgresql://user@host:port/database"
)


def supports_lease(url: str) -> bool:
    """Whether the store at ``url`` may be shared by several dispatchers (one active, the
    others standing by: ``corral.store.lease``). A SQLite store has one dispatcher."""
    return url.partition(":")[0].lower() in ("postgresql", "postgres")


def open_store(url: str) -> Store:
    """Open the store that ``url`` names; close it with ``close()``.

    ``sqlite:///abs/path.db`` (three slashes, then an absolute path), ``sqlite:relative.db``
    or a bare path ending in ``.db``/``.sqlite`` open a `SQLiteStore`. A SQLite URL may end
    in ``?synchronous=NORMAL`` to trade power-loss durability for speed. Raises
    `InvalidRequest` (field ``store``) for a URL it cannot use, and `StoreError` when the
    store cannot be opened.
    """
    scheme, sep, rest = url.partition(":")
    if scheme.lower() in ("postgresql", "postgres"):
        return PostgresStore(url)
    if sep and scheme.lower() == "sqlite":
        return _open_sqlite(url, rest)
    if url.lower().endswith(_SQLITE_SUFFIXES) and "://" not in url:
        return SQLiteStore(Path(url).expanduser())
    raise InvalidRequest(f"store {url!r}: unknown kind of store URL; {_SUPPORTED}", field="store")


def _open_sqlite(url: str, rest: str) -> SQLiteStore:
    path, _, query = rest.partition("?")
    if path.startswith("//"):
        # sqlite:///abs: an empty host, then the absolute path
        host, _, tail = path[2:].partition("/")
        if host or not tail:
            raise InvalidRequest(
                f"store {url!r}: a sqlite URL has no host; write sqlite:///absolute/path.db"
                " (three slashes) or sqlite:relative/path.db",
                field="store",
            )
        path = "/" + tail
    if not path:
        raise InvalidRequest(f"store {url!r} names no file; {_SUPPORTED}", field="store")
    options = dict(parse_qsl(query, keep_blank_values=True))
    synchronous = _SYNCHRONOUS.get(options.pop("synchronous", "FULL").upper())
    if options or synchronous is None:
        raise InvalidRequest(
            f"store {url!r}: the only sqlite option is synchronous=FULL (the default) or"
            " synchronous=NORMAL",
            field="store",
        )
    return SQLiteStore(Path(path).expanduser(), synchronous=synchronous)
