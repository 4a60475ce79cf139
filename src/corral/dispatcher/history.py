"""Each process's state history: its last changes of state, with their times and reasons.

``State`` notes every committed change of a process's ``(round, state)`` here, and writes
the step to the store's ``history`` table in the same transaction as the record that made
it: one short row per change, never rewritten. A process keeps its last :data:`LIMIT`
steps; when a new one goes beyond that, the oldest row is deleted in the same transaction,
so the table and the memory both stay bounded per process.

In memory, a process's steps are one tuple: their numbers packed in a ``bytes`` (18 bytes a
step), then each step's detail (an interned string, or None when it repeats the step
before's, as "on node n1" does from ASSIGNED to RUNNING). A process with the usual five
steps costs about 200 bytes; a deque of records would cost five times as much.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from corral.core.ids import Upid
from corral.core.model import ProcessRecord
from corral.core.process_states import ProcessState
from corral.store import Change, Delete, Put, Table

#: steps kept per process: a few rounds of a process that keeps restarting
LIMIT = 32
#: one step's numbers: seq, round, state, time
_PACKED = struct.Struct("<IIHd")
#: a process's steps: their packed numbers, then one detail per step
Steps = tuple[bytes, *tuple[str | None, ...]]


@dataclass(frozen=True, slots=True)
class Step:
    """One change of state: which round, which state, when, and why (or where)."""

    #: orders the steps of one process; unique per process, it names the step's row
    seq: int
    round: int
    state: ProcessState
    time: float
    detail: str | None

    def as_doc(self) -> dict[str, Any]:
        """The public form (states as ``"500-RUNNING"``)."""
        return {
            "round": self.round,
            "state": str(self.state),
            "time": self.time,
            "detail": self.detail,
        }


def detail_of(record: ProcessRecord) -> str | None:
    """What a step says besides its state: why it waits or ended, or where it runs."""
    state = record.state
    if state.is_queued:
        return record.waiting_reason
    if state.is_terminal:
        return record.end_reason
    if state.holds_slot and record.assigned is not None:
        return f"on node {record.assigned}"
    return None


def _key(upid: str, seq: int) -> str:
    # '/' never occurs in an upid (validation refuses it), so keys of two processes differ
    return f"{upid}/{seq}"


class History:
    """The steps of every process, in memory, mirrored by the store's ``history`` table."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self._steps: dict[Upid, Steps] = {}

    def load(self, rows: Mapping[str, Mapping[str, Any]]) -> None:
        """Fill from the table's rows (at start-up, before any change is noted)."""
        grouped: dict[Upid, list[Step]] = {}
        for doc in rows.values():
            step = Step(
                seq=int(doc["n"]),
                round=int(doc["r"]),
                state=ProcessState(doc["s"]),
                time=float(doc["t"]),
                detail=_shared(doc.get("d")),
            )
            grouped.setdefault(Upid(doc["u"]), []).append(step)
        for upid, steps in grouped.items():
            steps.sort(key=lambda step: step.seq)
            # rows beyond the limit (a smaller limit than before) go with the next change
            self._steps[upid] = _packed(steps)

    def noted(self, record: ProcessRecord) -> list[Change]:
        """Note the record's new state; return the rows to write with it."""
        numbers, *details = self._steps.get(record.upid, (b"",))
        seq = _PACKED.unpack_from(numbers, len(numbers) - _PACKED.size)[0] + 1 if details else 0
        detail = _shared(detail_of(record))
        if detail is not None and detail == next((d for d in reversed(details) if d), None):
            detail = None  # said by the step before (the node, from ASSIGNED to RUNNING)
        doc = {"u": record.upid, "n": seq, "r": record.round, "s": int(record.state)}
        doc["t"] = record.updated_at
        if detail is not None:
            doc["d"] = detail
        changes: list[Change] = [Put(Table.HISTORY, _key(record.upid, seq), doc)]
        numbers += _PACKED.pack(seq, record.round, int(record.state), record.updated_at)
        details.append(detail)
        while len(details) > self.limit:
            gone = _PACKED.unpack_from(numbers)[0]
            changes.append(Delete(Table.HISTORY, _key(record.upid, gone)))
            numbers, details = numbers[_PACKED.size :], details[1:]
        self._steps[record.upid] = (numbers, *details)
        return changes

    def forget(self, upid: Upid) -> list[Change]:
        """Drop the process's steps; return the deletions of their rows."""
        packed = self._steps.pop(upid, None)
        if packed is None:
            return []
        return [Delete(Table.HISTORY, _key(upid, step.seq)) for step in _unpacked(packed)]

    def of(self, upid: Upid) -> list[Step]:
        """The process's steps, oldest first (empty for a process never seen to change)."""
        packed = self._steps.get(upid)
        return [] if packed is None else list(_unpacked(packed))


def _packed(steps: list[Step]) -> Steps:
    numbers = b"".join(_PACKED.pack(s.seq, s.round, int(s.state), s.time) for s in steps)
    return (numbers, *(s.detail for s in steps))


def _unpacked(packed: Steps) -> Iterator[Step]:
    numbers, details = packed[0], packed[1:]
    for (seq, round_, state, time), detail in zip(
        _PACKED.iter_unpack(numbers), details, strict=True
    ):
        yield Step(seq, round_, ProcessState(state), time, detail)


def _shared(text: str | None) -> str | None:
    """Reasons repeat over many processes ("exited with status 0"): keep one copy."""
    return None if text is None else sys.intern(text)
