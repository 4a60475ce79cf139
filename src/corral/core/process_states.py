"""The process lifecycle: the EPU states, the events that move between them, and modes.

A process lives through *rounds*. Within a round its state only moves forward (the EPU
numbers grow); a restart or a re-schedule opens a new round that starts low again, so the
pair ``(round, state)`` only ever grows. Every move is in :data:`TRANSITIONS`, and
:func:`advance` is the one place that applies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum

from corral.errors import IllegalTransition


class ProcessState(IntEnum):
    """EPU process states; the value is the EPU number, ``str()`` the EPU string."""

    #: known (``create_process``) but not scheduled
    UNSCHEDULED = 100
    #: a restart waiting out its backoff delay before it is requested again
    UNSCHEDULED_PENDING = 150
    #: scheduled, not yet looked at by the matchmaker
    REQUESTED = 200
    #: a restart has been requested (after an exit, a failure or a lost node)
    DIED_REQUESTED = 250
    #: no slot fits now; the process waits (``waiting_reason`` says why)
    WAITING = 300
    #: a slot on a node is reserved for it
    ASSIGNED = 350
    #: the launch command has been sent to the node's agent (which may hold it in its
    #: queue until one of its slots frees: ``launch_ahead``)
    PENDING = 400
    #: the agent reported the OS process started
    RUNNING = 500
    #: a termination was asked; the process group is being signalled
    TERMINATING = 600
    #: stopped on request
    TERMINATED = 700
    #: exited with status 0
    EXITED = 800
    #: exited non-zero, killed by a signal, failed to start, or lost for good
    FAILED = 850
    #: could not be queued under its ``queueing_mode``
    REJECTED = 900

    def __str__(self) -> str:
        return f"{self.value}-{self.name}"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def is_queued(self) -> bool:
        """Waiting for a slot (or for its restart delay): nothing runs for it."""
        return self in QUEUED_STATES

    @property
    def holds_slot(self) -> bool:
        """A slot on ``assigned`` is in use (or reserved) for this round."""
        return self in SLOT_STATES

    @classmethod
    def parse(cls, text: str | int) -> ProcessState:
        """Accept ``"500-RUNNING"``, ``"RUNNING"``, ``"running"``, ``"500"`` or ``500``."""
        if isinstance(text, int):
            return cls(text)
        head = text.strip().split("-", 1)
        if head[0].isdigit():
            state = cls(int(head[0]))
            if len(head) == 2 and head[1].upper() != state.name:
                raise ValueError(f"{text!r} is not a process state")
            return state
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"{text!r} is not a process state") from None


TERMINAL_STATES = frozenset(
    {
        ProcessState.TERMINATED,
        ProcessState.EXITED,
        ProcessState.FAILED,
        ProcessState.REJECTED,
    }
)
QUEUED_STATES = frozenset(
    {
        ProcessState.UNSCHEDULED_PENDING,
        ProcessState.REQUESTED,
        ProcessState.DIED_REQUESTED,
        ProcessState.WAITING,
    }
)
#: states the matchmaker looks at (UNSCHEDULED_PENDING waits for its delay first)
MATCHABLE_STATES = frozenset(
    {ProcessState.REQUESTED, ProcessState.DIED_REQUESTED, ProcessState.WAITING}
)
#: placed on a node, not known to have started there
UNSTARTED_STATES = frozenset({ProcessState.ASSIGNED, ProcessState.PENDING})
SLOT_STATES = frozenset(
    {
        ProcessState.ASSIGNED,
        ProcessState.PENDING,
        ProcessState.RUNNING,
        ProcessState.TERMINATING,
    }
)


class ProcessEvent(Enum):
    """What happened to a process; the key of :data:`TRANSITIONS`."""

    CREATE = "create"
    SCHEDULE = "schedule"
    RESTART_LATER = "restart_later"
    RESTART_DUE = "restart_due"
    RESTART_NOW = "restart_now"
    WAIT = "wait"
    ASSIGN = "assign"
    REJECT = "reject"
    LAUNCH = "launch"
    START = "start"
    EXIT_OK = "exit_ok"
    FAIL = "fail"
    TERMINATE = "terminate"
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class Transition:
    """A move: from any of ``sources`` to ``target``; ``new_round`` opens the next round."""

    sources: frozenset[ProcessState | None]
    target: ProcessState
    new_round: bool = False


_S = ProcessState
_ANY_TERMINAL: frozenset[ProcessState | None] = frozenset(TERMINAL_STATES)
_LIVE: frozenset[ProcessState | None] = frozenset({_S.ASSIGNED, _S.PENDING, _S.RUNNING})
_WAITABLE: frozenset[ProcessState | None] = frozenset(MATCHABLE_STATES)

TRANSITIONS: dict[ProcessEvent, Transition] = {
    # create_process: the record exists, nothing is requested
    ProcessEvent.CREATE: Transition(frozenset({None}), _S.UNSCHEDULED),
    # schedule_process: a first request, or a fresh round for a finished process
    ProcessEvent.SCHEDULE: Transition(frozenset({None, _S.UNSCHEDULED}), _S.REQUESTED),
    # the restart policy wants another round after a delay
    ProcessEvent.RESTART_LATER: Transition(
        frozenset({*_LIVE, _S.TERMINATING, *_ANY_TERMINAL}), _S.UNSCHEDULED_PENDING, True
    ),
    ProcessEvent.RESTART_DUE: Transition(frozenset({_S.UNSCHEDULED_PENDING}), _S.DIED_REQUESTED),
    # the restart policy (or restart_process) wants another round at once
    ProcessEvent.RESTART_NOW: Transition(
        frozenset({*_LIVE, _S.TERMINATING, *_ANY_TERMINAL}), _S.DIED_REQUESTED, True
    ),
    ProcessEvent.WAIT: Transition(frozenset({_S.REQUESTED, _S.DIED_REQUESTED}), _S.WAITING),
    ProcessEvent.ASSIGN: Transition(_WAITABLE, _S.ASSIGNED),
    ProcessEvent.REJECT: Transition(_WAITABLE, _S.REJECTED),
    ProcessEvent.LAUNCH: Transition(frozenset({_S.ASSIGNED}), _S.PENDING),
    ProcessEvent.START: Transition(frozenset({_S.ASSIGNED, _S.PENDING}), _S.RUNNING),
    ProcessEvent.EXIT_OK: Transition(_LIVE, _S.EXITED),
    ProcessEvent.FAIL: Transition(frozenset({*_LIVE, *_WAITABLE}), _S.FAILED),
    ProcessEvent.TERMINATE: Transition(_LIVE, _S.TERMINATING),
    # a queued process, or one whose launch was never sent, needs no signal: it is
    # terminated at once
    ProcessEvent.TERMINATED: Transition(
        frozenset(
            {_S.UNSCHEDULED, _S.UNSCHEDULED_PENDING, *_WAITABLE, _S.ASSIGNED, _S.TERMINATING}
        ),
        _S.TERMINATED,
    ),
}


def can_advance(state: ProcessState | None, event: ProcessEvent) -> bool:
    """Whether :func:`advance` accepts ``event`` for a process in ``state``."""
    if event is ProcessEvent.SCHEDULE and state in TERMINAL_STATES:
        return True
    return state in TRANSITIONS[event].sources


def advance(
    state: ProcessState | None, round_: int, event: ProcessEvent
) -> tuple[int, ProcessState]:
    """Apply ``event`` to a process in ``state`` at ``round_``; return the new (round, state).

    Scheduling a finished process is the one event whose round depends on the source: it
    opens a new round, as the restart events always do.
    """
    transition = TRANSITIONS[event]
    if event is ProcessEvent.SCHEDULE and state in TERMINAL_STATES:
        return round_ + 1, transition.target
    if state not in transition.sources:
        shown = "nothing" if state is None else str(state)
        raise IllegalTransition(f"a process in {shown} cannot {event.value}")
    return (round_ + 1 if transition.new_round else round_), transition.target


class QueueingMode(Enum):
    """When a process may wait for a slot (EPU semantics)."""

    #: never queue: no slot now means REJECTED
    NEVER = "NEVER"
    #: always queue
    ALWAYS = "ALWAYS"
    #: may wait on its first start only; a restart without a slot is REJECTED
    START_ONLY = "START_ONLY"
    #: may wait on restarts only; a first start without a slot is REJECTED
    RESTART_ONLY = "RESTART_ONLY"

    def may_wait(self, is_restart: bool) -> bool:
        if self is QueueingMode.ALWAYS:
            return True
        if self is QueueingMode.START_ONLY:
            return not is_restart
        if self is QueueingMode.RESTART_ONLY:
            return is_restart
        return False


class RestartMode(Enum):
    """When a process that ended on its own is started again."""

    NEVER = "NEVER"
    ALWAYS = "ALWAYS"
    #: restart unless it exited 0
    ABNORMAL = "ABNORMAL"
