"""Agent reports → process states, and what to do about processes that are gone.

Level-triggered: a report is compared with the store's record. The current round moves
forward; a report of an older round (or of a process the store no longer wants on that
node) is stale, and its process is killed (or its queued launch dropped) or forgotten on
the agent. A launch the agent dropped before it started (killed, or withdrawn to be placed
where a slot is free) ends its round without a run. After a round's end
is committed the agent is told to forget it, so nothing is reported twice into the void
and nothing is lost if the dispatcher dies in between.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable, Mapping

from corral.clock import Clock
from corral.core.disconnect import Fence
from corral.core.ids import EngineId, NodeId, Round, Upid
from corral.core.model import MAX_DISPATCH_ATTEMPTS, Engine, ProcessRecord
from corral.core.process_states import UNSTARTED_STATES, ProcessState
from corral.core.restart import Outcome
from corral.dispatcher.rounds import describe_exit, ended, never_ran, started
from corral.dispatcher.state import State
from corral.wire.messages import (
    EXITED,
    NOT_STARTED,
    QUEUED,
    RUNNING,
    Forget,
    Message,
    ProcessReport,
)

#: statuses of a round that may still run on the agent
_LIVE = (QUEUED, RUNNING)

log = logging.getLogger("corral.syncer")

Send = Callable[[NodeId, Message], None]


class Syncer:
    def __init__(
        self,
        state: State,
        clock: Clock,
        send: Send,
        kill: Callable[[NodeId, Upid, Round], None],
        relaunch: Callable[[ProcessRecord], None],
        wake_mapper: Callable[[], None],
        rng: random.Random | None = None,
        engines: Mapping[EngineId, Engine] | None = None,
    ) -> None:
        self._engines = dict(engines or {})
        self._state = state
        self._clock = clock
        self._send = send
        self._kill = kill
        self._relaunch = relaunch
        self._wake_mapper = wake_mapper
        self._rng = rng or random.Random()

    def _max_dispatch_attempts(self, engine_id: EngineId | None) -> int:
        engine = self._engines.get(engine_id) if engine_id is not None else None
        return engine.max_dispatch_attempts if engine is not None else MAX_DISPATCH_ATTEMPTS

    def reports(self, node_id: NodeId, reports: Iterable[ProcessReport]) -> None:
        # A batch may hold several reports of one process (started, then exited): each
        # applies to the record the previous one made, and each step is kept, so every
        # listener sees RUNNING before EXITED even for a process that ended at once.
        latest: dict[Upid, ProcessRecord] = {}
        steps: list[ProcessRecord] = []
        forget: list[tuple[Upid, Round]] = []
        for report in reports:
            upid = Upid(report.upid)
            record = latest.get(upid) or self._state.processes.get(upid)
            if not _current(record, node_id, report.round):
                self._stale(node_id, report)
                continue
            assert record is not None
            new = self._apply(record, report)
            if new:
                latest[upid] = new[-1]
                steps.extend(new)
                if report.status not in _LIVE:
                    forget.append((record.upid, record.round))
        if steps:
            self._save(steps, node_id, forget)

    def reconcile(self, node_id: NodeId, inventory: list[ProcessReport]) -> None:
        """A (re)joined agent listed what it knows; settle every process placed on it."""
        self.reports(node_id, inventory)
        known = {(r.upid, r.round) for r in inventory}
        lost: list[ProcessRecord] = []
        for upid in list(self._state.by_node.get(node_id, ())):
            record = self._state.processes[upid]
            if (record.upid, record.round) in known:
                continue
            if record.state in UNSTARTED_STATES:
                # The launch never arrived (or the dispatcher died before sending it):
                # launches are idempotent, so send it again.
                self._relaunch(record)
            else:
                lost.append(record)
        if lost:
            self.lose(lost, f"the agent on {node_id} no longer knows it")

    def lose(
        self,
        records: Iterable[ProcessRecord],
        reason: str,
        fence: Fence | None = None,
    ) -> None:
        """End the rounds of processes whose node (or agent) is gone; ``fence`` when they
        may still run there (see ``core.disconnect``)."""
        now = self._clock.time()
        changed: list[ProcessRecord] = []
        for record in records:
            changed.append(
                ended(
                    record,
                    Outcome.NODE_LOST,
                    now,
                    self._rng.random(),
                    reason=reason,
                    max_dispatch_attempts=self._max_dispatch_attempts(record.engine),
                    fence=fence,
                )
            )
        if changed:
            self._state.save_processes(changed)
            self._wake_mapper()

    def _apply(self, record: ProcessRecord, report: ProcessReport) -> list[ProcessRecord]:
        """The steps ``report`` moves ``record`` through (none, one or two)."""
        now = self._clock.time()
        unstarted = record.state in UNSTARTED_STATES
        if report.status in _LIVE:
            if unstarted:
                if report.status == QUEUED:
                    return []  # it waits for a slot of its node: still PENDING there
                return [started(record, report.pid, report.started_at, now)]
            if record.state is ProcessState.TERMINATING:
                # The kill may have been sent while the agent was away: send it again.
                self._kill(record.assigned or NodeId(""), record.upid, record.round)
            return []
        if report.status == NOT_STARTED:
            return [never_ran(record, now, report.ended_at)]
        steps = []
        if unstarted and report.status == EXITED:
            # It ran and ended while we were not listening (the dispatcher was down when
            # it started): record the start it had before its end.
            record = started(record, report.pid, report.started_at, now)
            steps.append(record)
        exit_code = report.exit_code if report.status == EXITED else None
        outcome, reason = describe_exit(exit_code, report.signal, report.error)
        steps.append(
            ended(
                record,
                outcome,
                now,
                self._rng.random(),
                exit_code=exit_code,
                signal=report.signal,
                reason=reason,
                ended_at=report.ended_at,
            )
        )
        return steps

    def _save(
        self, changed: list[ProcessRecord], node_id: NodeId, forget: list[tuple[Upid, Round]]
    ) -> None:
        future = self._state.save_processes(changed)
        if forget:

            def forget_committed(done: asyncio.Future[None]) -> None:
                # Only a durable end may be forgotten: after a failed commit (a deposed
                # dispatcher, a broken store) the agent must keep reporting it to whoever
                # loads the store next.
                if done.cancelled() or done.exception() is not None:
                    return
                for upid, round_ in forget:
                    self._send(node_id, Forget(upid, round_))

            future.add_done_callback(forget_committed)
            self._wake_mapper()

    def _stale(self, node_id: NodeId, report: ProcessReport) -> None:
        if report.status in _LIVE:
            log.info("killing stale %s round %d on %s", report.upid, report.round, node_id)
            self._kill(node_id, Upid(report.upid), Round(report.round))
        else:
            self._send(node_id, Forget(report.upid, report.round))
            # its slot (and node_exclusive tag) on the node is free now
            self._wake_mapper()


def _current(record: ProcessRecord | None, node_id: NodeId, round_: int) -> bool:
    return (
        record is not None
        and record.round == round_
        and record.assigned == node_id
        and record.state.holds_slot
    )
