"""The store's interface: tables of JSON documents, changed in all-or-nothing transactions.

The dispatcher keeps its live state in memory and writes each change through a `Store`
before it acknowledges it. The store knows tables, keys and JSON documents, nothing of
processes or nodes: what a document means is the dispatcher's business.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol


class Table(StrEnum):
    """The tables every backend holds; the value is the SQL table name."""

    DEFINITIONS = "definitions"
    PROCESSES = "processes"
    NODES = "nodes"
    META = "meta"
    #: the shared event queues (``corral.queue``), keyed by zero-padded event id
    EVENTS = "events"


@dataclass(frozen=True, slots=True)
class Put:
    """Create or replace the document at ``(table, key)``.

    ``doc`` must be JSON-serialisable (no NaN or infinity, so that every backend can hold it)
    and must not be mutated once handed over: a `GroupCommitter` serialises it later, on its
    writer thread. In `Table.PROCESSES` the doc must carry ``state`` (int) and ``round`` (int),
    and may carry ``assigned`` (str or None); the backend keeps them as indexed columns.
    """

    table: Table
    key: str
    doc: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Delete:
    """Remove the document at ``(table, key)``; removing a missing key is not an error."""

    table: Table
    key: str


Change = Put | Delete


@dataclass(frozen=True, slots=True)
class Loaded:
    """The whole contents of a store, as read at start-up."""

    #: table -> key -> doc; every `Table` is present, possibly empty
    #: documents, or what ``load``'s ``convert`` made of them
    tables: Mapping[Table, Mapping[str, Any]]


#: turns a document of a table into what the caller keeps of it
Convert = Callable[[Table, dict[str, Any]], Any]


class Store(Protocol):
    """A durable table-of-documents store.

    One caller at a time: the dispatcher calls `load` on its main thread at start-up, then
    `apply` only from the group committer's writer thread.
    """

    def load(self, convert: Convert | None = None) -> Loaded:
        """Read every table, for start-up.

        With ``convert``, each document is handed to it as soon as it is read and its result
        is kept instead: a large store is never held twice in memory, as documents and as
        the caller's records.
        """
        ...

    def apply(self, changes: Sequence[Change]) -> None:
        """Apply ``changes`` as one transaction: all of them become durable, or none does.

        When several changes name the same ``(table, key)`` the last one wins. Raises
        `corral.errors.StoreError` when the transaction fails; nothing of it is applied then.
        """
        ...

    def free_space(self) -> int | None:
        """Bytes free for the store on its disk; None when that is not ours to see (a server)."""
        ...

    def close(self) -> None:
        """Release the backend's resources; calling it twice is harmless."""
        ...
