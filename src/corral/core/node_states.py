"""The node lifecycle, idle behaviour and heartbeat health, with their transitions.

::

    booting ──► idle ⇄ busy ──► shutting_down ──► gone
       │          ▲  ▲ │             ▲
       ▼          │  │ ▼             │
     (boot timeout)  disconnected ───┤   (heartbeats missing: maybe partitioned)
                  │                  │
                  unknown ───────────┘   (found after a restart, not yet heard from)

A node is idle or busy only while its agent is connected and healthy; the mapper places
work only on nodes whose idle behaviour is ``run``. A node whose heartbeats are missing is
*disconnected*: it takes no work, its processes wait out their disconnect grace
(``core.disconnect``), and it is lost (gone) once none of them waits any more, or back to
idle or busy when its agent joins again.
"""

from __future__ import annotations

from enum import Enum

from corral.errors import IllegalTransition


class NodeState(Enum):
    BOOTING = "booting"
    IDLE = "idle"
    BUSY = "busy"
    SHUTTING_DOWN = "shutting_down"
    GONE = "gone"
    UNKNOWN = "unknown"
    DISCONNECTED = "disconnected"

    def __str__(self) -> str:
        return self.value


class IdleBehavior(Enum):
    """What the dispatcher may do with a node (Arvados' run / hold / drain)."""

    #: take new work; may be retired when idle
    RUN = "run"
    #: keep it, but place nothing new on it
    HOLD = "hold"
    #: place nothing new; retire it once its work is done
    DRAIN = "drain"


class Health(Enum):
    """Heartbeat health by the dispatcher's own clock (so clock skew does not matter)."""

    OK = "ok"
    WARNING = "warning"
    MISSING = "missing"


_N = NodeState
NODE_TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    _N.BOOTING: frozenset({_N.IDLE, _N.BUSY, _N.SHUTTING_DOWN, _N.GONE}),
    _N.UNKNOWN: frozenset({_N.IDLE, _N.BUSY, _N.SHUTTING_DOWN, _N.GONE, _N.DISCONNECTED}),
    _N.IDLE: frozenset({_N.BUSY, _N.SHUTTING_DOWN, _N.GONE, _N.UNKNOWN, _N.DISCONNECTED}),
    _N.BUSY: frozenset({_N.IDLE, _N.SHUTTING_DOWN, _N.GONE, _N.UNKNOWN, _N.DISCONNECTED}),
    _N.DISCONNECTED: frozenset({_N.IDLE, _N.BUSY, _N.SHUTTING_DOWN, _N.GONE, _N.UNKNOWN}),
    _N.SHUTTING_DOWN: frozenset({_N.GONE}),
    _N.GONE: frozenset(),
}


def advance_node(state: NodeState, target: NodeState) -> NodeState:
    """Return ``target`` if a node may move there from ``state``; staying put is allowed."""
    if target is state or target in NODE_TRANSITIONS[state]:
        return target
    raise IllegalTransition(f"a node that is {state} cannot become {target}")


def classify_health(since_last_heard: float, warning_after: float, missing_after: float) -> Health:
    """Health of a node heard from ``since_last_heard`` seconds ago."""
    if since_last_heard >= missing_after:
        return Health.MISSING
    if since_last_heard >= warning_after:
        return Health.WARNING
    return Health.OK
