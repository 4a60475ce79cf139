"""The state history and the audit log: bounded, durable row by row, and read back in order.

Both are pure bookkeeping over store changes; these tests look at the changes they return
(history) or hand to their commit function (audit), and at what a reload gives back.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from corral.core.ids import DefinitionId, NodeId, Round, Upid
from corral.core.model import ProcessRecord, ProcessRequest
from corral.core.process_states import ProcessState
from corral.dispatcher.audit import AuditLog
from corral.dispatcher.history import History, detail_of
from corral.store import Change, Delete, Put, Table


def record(state: ProcessState, time: float, **fields: Any) -> ProcessRecord:
    base = ProcessRecord(
        upid=Upid("p1"),
        request=ProcessRequest(DefinitionId("d")),
        state=state,
        round=Round(1),
        updated_at=time,
    )
    return replace(base, **fields)


def rows_after(changes: list[Change], rows: dict[str, Any] | None = None) -> dict[str, Any]:
    rows = dict(rows or {})
    for change in changes:
        if isinstance(change, Put):
            rows[change.key] = change.doc
        else:
            rows.pop(change.key, None)
    return rows


def test_each_state_change_is_one_row_with_its_time_and_why() -> None:
    history = History()
    changes = history.noted(record(ProcessState.WAITING, 10.0, waiting_reason="no node"))
    changes += history.noted(
        record(ProcessState.RUNNING, 12.5, assigned=NodeId("n1"), waiting_reason=None)
    )
    changes += history.noted(record(ProcessState.FAILED, 13.0, end_reason="exited with status 3"))
    assert all(isinstance(c, Put) and c.table is Table.HISTORY for c in changes)
    assert [step.as_doc() for step in history.of(Upid("p1"))] == [
        {"round": 1, "state": "300-WAITING", "time": 10.0, "detail": "no node"},
        {"round": 1, "state": "500-RUNNING", "time": 12.5, "detail": "on node n1"},
        {"round": 1, "state": "850-FAILED", "time": 13.0, "detail": "exited with status 3"},
    ]


def test_a_process_keeps_its_last_steps_and_the_oldest_rows_are_deleted() -> None:
    history = History(limit=3)
    rows: dict[str, Any] = {}
    for i in range(5):
        rows = rows_after(
            history.noted(record(ProcessState.RUNNING, float(i), round=Round(i))), rows
        )
    assert [s.round for s in history.of(Upid("p1"))] == [2, 3, 4]
    assert len(rows) == 3
    # a reload from the rows gives the same steps back, in order
    again = History(limit=3)
    again.load(rows)
    assert again.of(Upid("p1")) == history.of(Upid("p1"))


def test_a_reloaded_history_goes_on_numbering_and_trims_to_a_smaller_limit() -> None:
    history = History()
    rows: dict[str, Any] = {}
    for i in range(6):
        rows = rows_after(history.noted(record(ProcessState.RUNNING, float(i))), rows)
    smaller = History(limit=2)
    smaller.load(rows)
    changes = smaller.noted(record(ProcessState.EXITED, 9.0))
    deleted = [c for c in changes if isinstance(c, Delete)]
    assert len(deleted) == 5
    assert [s.time for s in smaller.of(Upid("p1"))] == [5.0, 9.0]
    assert len(rows_after(changes, rows)) == 2


def test_steps_say_where_a_process_runs_and_why_it_waits_or_ended() -> None:
    assert detail_of(record(ProcessState.WAITING, 0, waiting_reason="why")) == "why"
    assert detail_of(record(ProcessState.ASSIGNED, 0, assigned=NodeId("n"))) == "on node n"
    assert detail_of(record(ProcessState.EXITED, 0, end_reason="done")) == "done"
    assert detail_of(record(ProcessState.UNSCHEDULED, 0)) is None


def audit_log(limit: int = 100) -> tuple[AuditLog, list[list[Change]]]:
    committed: list[list[Change]] = []
    return AuditLog(committed.append, limit=limit), committed


def test_an_audit_entry_is_committed_with_who_what_and_when() -> None:
    log, committed = audit_log()
    entry = log.note("api token from 127.0.0.1", "terminate_process", "p1", 5.0, {"state": "x"})
    assert entry.id == 1
    [[put]] = committed
    assert isinstance(put, Put)
    assert put.table is Table.AUDIT
    assert put.doc == {
        "id": 1,
        "time": 5.0,
        "actor": "api token from 127.0.0.1",
        "action": "terminate_process",
        "target": "p1",
        "detail": {"state": "x"},
    }


def test_the_audit_log_keeps_its_last_entries_and_pages_back_newest_first() -> None:
    log, committed = audit_log(limit=3)
    for i in range(5):
        log.note("me", "schedule_process", f"p{i}", float(i))
    rows = rows_after([c for batch in committed for c in batch])
    assert sorted(doc["target"] for doc in rows.values()) == ["p2", "p3", "p4"]
    assert [e.target for e in log.entries(2)] == ["p4", "p3"]
    assert [e.target for e in log.entries(2, before=4)] == ["p2"]
    # reloaded, it goes on numbering after the last entry
    again, _ = audit_log(limit=3)
    again.load(rows)
    assert again.note("me", "x", "y", 9.0).id == 6


def test_a_batch_entry_is_found_by_any_of_its_processes() -> None:
    log, _ = audit_log()
    log.note("me", "schedule_processes", "2 processes", 1.0, {"upids": ["a", "b"]})
    log.note("me", "terminate_process", "a", 2.0)
    assert [e.action for e in log.entries(10, target="b")] == ["schedule_processes"]
    assert len(log.entries(10, target="a")) == 2


def test_a_repeated_detail_is_said_once() -> None:
    # the node of a round shows at ASSIGNED; PENDING and RUNNING do not repeat it
    history = History()
    for state in (ProcessState.ASSIGNED, ProcessState.PENDING, ProcessState.RUNNING):
        history.noted(record(state, 1.0, assigned=NodeId("n1")))
    assert [s.detail for s in history.of(Upid("p1"))] == ["on node n1", None, None]
