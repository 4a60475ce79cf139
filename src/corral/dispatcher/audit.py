"""The audit log: who did what, durable in the store's ``audit`` table.

Every operator action that changes something is noted with the actor the API layer named
("api token from 127.0.0.1", "ui session 3fa2b1 of the api token from ::1"): definitions
created, updated or removed, processes created, scheduled, restarted or terminated, node
actions, and dashboard log-ins and log-outs. A request that changes nothing (an idempotent
repeat) is not an action and is not noted.

The service notes an action in the same loop turn as it saves the change, so both go into
one group commit: an action is durable with its entry or not at all. Entries are numbered;
the table keeps the last :data:`LIMIT` of them (the oldest row is deleted as a new one
comes), and each entry also goes to the ``corral.audit`` logger, for a record that outlives
the window.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from corral.store import Change, Delete, Put, Table

log = logging.getLogger("corral.audit")

#: entries kept in the store (and in memory)
LIMIT = 20_000
#: the actor of an action asked for in-process, not through the API
IN_PROCESS = "in-process caller"


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    time: float
    actor: str
    action: str
    target: str
    detail: Mapping[str, Any] | None = None

    def concerns(self, target: str) -> bool:
        """Whether the entry is about ``target`` (one of a batch's processes counts)."""
        if self.target == target:
            return True
        upids = (self.detail or {}).get("upids")
        return isinstance(upids, list) and target in upids

    def as_doc(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": self.time,
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "detail": None if self.detail is None else dict(self.detail),
        }


def _key(entry_id: int) -> str:
    """Zero-padded, so that the store's keys sort as the ids do."""
    return f"{entry_id:020d}"


class AuditLog:
    """The last :data:`LIMIT` entries, in memory and in the store."""

    def __init__(self, commit: Callable[[list[Change]], object], limit: int = LIMIT) -> None:
        self._commit = commit
        self.limit = limit
        self._entries: deque[Entry] = deque()
        self._next_id = 1

    def load(self, rows: Mapping[str, Mapping[str, Any]]) -> None:
        """Fill from the table's rows, at start-up."""
        for key in sorted(rows):
            doc = rows[key]
            entry = Entry(
                id=int(doc["id"]),
                time=float(doc["time"]),
                actor=str(doc["actor"]),
                action=str(doc["action"]),
                target=str(doc["target"]),
                detail=doc.get("detail"),
            )
            self._entries.append(entry)
            self._next_id = max(self._next_id, entry.id + 1)

    def note(
        self,
        actor: str,
        action: str,
        target: str,
        now: float,
        detail: Mapping[str, Any] | None = None,
    ) -> Entry:
        """Record an action; it commits with whatever else this loop turn saves."""
        entry = Entry(self._next_id, now, actor, action, target, detail)
        self._next_id += 1
        self._entries.append(entry)
        changes: list[Change] = [Put(Table.AUDIT, _key(entry.id), entry.as_doc())]
        while len(self._entries) > self.limit:
            changes.append(Delete(Table.AUDIT, _key(self._entries.popleft().id)))
        self._commit(changes)
        log.info("%s: %s %s%s", actor, action, target, f" {dict(detail)}" if detail else "")
        return entry

    def entries(
        self, limit: int, before: int | None = None, target: str | None = None
    ) -> list[Entry]:
        """The newest entries first, at most ``limit``; ``before`` an id pages back."""
        found: list[Entry] = []
        for entry in reversed(self._entries):
            if before is not None and entry.id >= before:
                continue
            if target is not None and not entry.concerns(target):
                continue
            found.append(entry)
            if len(found) >= limit:
                break
        return found

    def __len__(self) -> int:
        return len(self._entries)
