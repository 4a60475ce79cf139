"""How a process record moves: every change of (round, state) is built here.

Each function takes a record and returns the next one, using ``core.process_states`` for
the move and ``core.restart`` for what follows the end of a round. The loops and the
service only choose *which* of these to call.
"""

from __future__ import annotations

from typing import cast

from corral.core.disconnect import Fence, is_at_most_once
from corral.core.ids import NodeId, Round
from corral.core.model import MAX_DISPATCH_ATTEMPTS, ProcessRecord, evolved
from corral.core.process_states import UNSTARTED_STATES, ProcessEvent, ProcessState, advance
from corral.core.restart import Outcome, RestartPolicy, decide


def moved(
    record: ProcessRecord, event: ProcessEvent, now: float, **fields: object
) -> ProcessRecord:
    """``record`` after ``event``; a new round starts with a clean placement."""
    round_, state = advance(record.state, record.round, event)
    if round_ != record.round:
        fields = {
            "assigned": None,
            "hostname": None,
            "engine": None,
            "pid": None,
            "disconnected_since": None,
            **fields,
        }
    waiting = cast(str | None, fields.pop("waiting_reason", None))
    return evolved(
        record,
        round=Round(round_),
        state=state,
        updated_at=now,
        waiting_reason=waiting if state.is_queued else None,
        **fields,
    )


def assigned(
    record: ProcessRecord, node_id: NodeId, hostname: str | None, engine: str, now: float
) -> ProcessRecord:
    return moved(
        record,
        ProcessEvent.ASSIGN,
        now,
        assigned=node_id,
        hostname=hostname,
        engine=engine,
        dispatches=record.dispatches + 1,
    )


def started(
    record: ProcessRecord, pid: int | None, started_at: float | None, now: float
) -> ProcessRecord:
    return moved(
        record,
        ProcessEvent.START,
        now,
        pid=pid,
        starts=record.starts + 1,
        dispatches=0,
        started_at=started_at or now,
        exit_code=None,
        signal=None,
        ended_at=None,
    )


def ended(
    record: ProcessRecord,
    outcome: Outcome,
    now: float,
    rand: float,
    *,
    exit_code: int | None = None,
    signal: int | None = None,
    reason: str,
    ended_at: float | None = None,
    max_dispatch_attempts: int = MAX_DISPATCH_ATTEMPTS,
    fence: Fence | None = None,
) -> ProcessRecord:
    """The record after its round ended on its own (or its node was lost).

    A process being terminated ends TERMINATED whatever the cause. One whose node was lost
    before it started never ran, so its restart mode does not apply: it is placed again,
    until ``max_dispatch_attempts`` placements in a row have been lost. Otherwise the
    restart policy picks between a terminal state and a new round.

    ``fence`` is given when the round may still run on a node nobody can reach: an
    at-most-once process then gets no new round before the fence (see
    ``core.disconnect``), or fails if the fence is unknown.
    """
    result = _ended(
        record, outcome, now, rand, exit_code, signal, reason, ended_at, max_dispatch_attempts
    )
    if fence is None or result.round == record.round or not is_at_most_once(record.request):
        return result
    return _fenced(record, result, fence, now)


def _fenced(
    record: ProcessRecord, result: ProcessRecord, fence: Fence, now: float
) -> ProcessRecord:
    """``result`` (a new round of an at-most-once process), held back by ``fence``."""
    facts: dict[str, object] = {
        "exit_code": result.exit_code,
        "signal": result.signal,
        "ended_at": result.ended_at,
        "attempts": result.attempts,
    }
    where = f"node {record.assigned}" if record.assigned else "its node"
    if fence.until is None:
        return moved(
            record,
            ProcessEvent.FAIL,
            now,
            end_reason=f"{result.end_reason}; not started again: it is at-most-once and may "
            f"still run on {where}, whose agent does not stop on its own "
            "(its engine sets no stop_after_disconnect)",
            **facts,
        )
    if (result.not_before or now) >= fence.until:
        return result
    return moved(
        record,
        ProcessEvent.RESTART_LATER,
        now,
        end_reason=result.end_reason,
        not_before=fence.until,
        waiting_reason=f"{result.end_reason}; at-most-once: starting again in "
        f"{fence.until - now:.1f} s, once its copy on {where} has certainly stopped",
        dispatches=result.dispatches,
        **facts,
    )


def _ended(
    record: ProcessRecord,
    outcome: Outcome,
    now: float,
    rand: float,
    exit_code: int | None,
    signal: int | None,
    reason: str,
    ended_at: float | None,
    max_dispatch_attempts: int,
) -> ProcessRecord:
    facts: dict[str, object] = {
        "exit_code": exit_code,
        "signal": signal,
        "ended_at": ended_at or now,
        "end_reason": reason,
    }
    if record.state is ProcessState.TERMINATING:
        return moved(record, ProcessEvent.TERMINATED, now, **facts)
    if outcome is Outcome.NODE_LOST and record.state in UNSTARTED_STATES:
        if record.dispatches >= max_dispatch_attempts:
            facts["end_reason"] = (
                f"{reason}; gave up after {record.dispatches} dispatch attempt(s)"
                f" (max_dispatch_attempts)"
            )
            return moved(record, ProcessEvent.FAIL, now, **facts)
        return moved(
            record,
            ProcessEvent.RESTART_NOW,
            now,
            waiting_reason=f"{reason}; dispatching again ({record.dispatches} of "
            f"{max_dispatch_attempts} attempts lost)",
            **facts,
        )
    ran_for = 0.0
    if record.started_at is not None and record.state is ProcessState.RUNNING:
        ran_for = max(0.0, (ended_at or now) - record.started_at)
    policy = RestartPolicy.from_configuration(record.request.configuration)
    decision = decide(record.request.restart_mode, outcome, policy, record.attempts, ran_for, rand)
    if not decision.restart:
        event = ProcessEvent.EXIT_OK if outcome is Outcome.EXITED_OK else ProcessEvent.FAIL
        if decision.gave_up:
            facts["end_reason"] = f"{reason}; {decision.reason}"
        return moved(record, event, now, attempts=decision.attempts, **facts)
    facts["attempts"] = decision.attempts
    if decision.delay > 0:
        return moved(
            record,
            ProcessEvent.RESTART_LATER,
            now,
            not_before=now + decision.delay,
            waiting_reason=f"{reason}; restarting in {decision.delay:.1f} s "
            f"(attempt {decision.attempts})",
            **facts,
        )
    return moved(
        record,
        ProcessEvent.RESTART_NOW,
        now,
        waiting_reason=f"{reason}; restarting (attempt {decision.attempts})",
        **facts,
    )


def never_ran(record: ProcessRecord, now: float, ended_at: float | None) -> ProcessRecord:
    """The record after its node's agent dropped its launch before it started.

    Dropped on a Kill, a process being terminated ends TERMINATED. Otherwise the launch was
    withdrawn (a free slot elsewhere can take it now) or the node shuts down: the process
    goes back to the queue in a new round, and, as nothing was lost, that placement does
    not count as a dispatch attempt.
    """
    if record.state is ProcessState.TERMINATING:
        return moved(
            record,
            ProcessEvent.TERMINATED,
            now,
            ended_at=ended_at or now,
            end_reason="terminated before it ran",
        )
    return moved(
        record,
        ProcessEvent.RESTART_NOW,
        now,
        dispatches=max(0, record.dispatches - 1),
        waiting_reason=f"withdrawn from node {record.assigned} before it started; placing again",
    )


def describe_exit(
    exit_code: int | None, signal: int | None, error: str | None
) -> tuple[Outcome, str]:
    if error is not None:
        return Outcome.FAILED, f"failed to start: {error}"
    if signal is not None:
        return Outcome.FAILED, f"killed by signal {signal}"
    if exit_code == 0:
        return Outcome.EXITED_OK, "exited with status 0"
    return Outcome.FAILED, f"exited with status {exit_code}"
