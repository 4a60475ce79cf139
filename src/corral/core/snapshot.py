"""Read-only views the pure decisions take: what the nodes have and what waits for them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from corral.core.ids import EngineId, NodeId, Round, Upid
from corral.core.model import NO_RESOURCES, ConstraintValue, Resources
from corral.core.process_states import QueueingMode


@dataclass(frozen=True, slots=True)
class NodeView:
    node_id: NodeId
    engine: EngineId
    properties: Mapping[str, str]
    slots: int
    #: slots in use or reserved, including stale rounds the agent still runs
    used: int = 0
    exclusive_tags: frozenset[str] = frozenset()
    #: connected, healthy and allowed to take new work
    accepting: bool = True
    #: what is left of its instance type's resources (None: a slots-only node)
    room: Resources | None = None
    #: launches it may hold beyond its slots, to start as they free (the engine's
    #: ``launch_ahead``)
    ahead: int = 0
    #: launches it holds beyond its slots now, not counting those being withdrawn
    queued: int = 0
    #: launches it was asked to give back and has not answered for yet
    withdrawing: int = 0


@dataclass(frozen=True, slots=True)
class EngineView:
    engine_id: EngineId
    #: nodes created but whose agent has not joined yet
    booting: int = 0
    maximum_vms: int = 0
    #: why its cloud creates no node now ("cloud quota reached"), if it does not
    trouble: str | None = None
    #: the instance types of the nodes booting, for engines that have types
    booting_types: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Pending:
    """A process waiting for a slot, with only what the matchmaker needs."""

    upid: Upid
    round: Round
    constraints: Mapping[str, ConstraintValue] = field(default_factory=dict)
    execution_engine_id: EngineId | None = None
    node_exclusive: str | None = None
    queueing_mode: QueueingMode = QueueingMode.ALWAYS
    is_restart: bool = False
    #: already WAITING with a reason: may be skipped when nothing is free anywhere
    has_reason: bool = False
    resources: Resources = NO_RESOURCES


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Engines in configuration order (the first is the default), nodes, and the queue in
    the order processes should be served.

    ``queue`` and ``fresh`` may be live views of the dispatcher's tables, read during one
    synchronous call and only as far as needed: once every slot is taken, only ``fresh``
    (the queued processes without a reason yet, in queue order) is read on, so a long
    queue behind full nodes costs nothing per pass. ``fresh=None`` means "those of
    ``queue`` whose ``has_reason`` is false".
    """

    engines: tuple[EngineView, ...]
    nodes: tuple[NodeView, ...]
    queue: Iterable[Pending]
    fresh: Iterable[Pending] | None = None
    #: those of ``queue`` that may be placed ahead (``core._ahead.may_go_ahead``), in queue
    #: order; None: found by filtering ``queue``
    plain: Iterable[Pending] | None = None
    #: those of ``queue`` withdrawn from a busy node's queue, served before the others
    returning: tuple[Pending, ...] = ()
