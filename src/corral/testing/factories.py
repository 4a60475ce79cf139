"""Small builders of core records and snapshots, with defaults that make sense in a test.

Every builder takes the few fields a test usually cares about as keywords and fills in
the rest, so a test reads as its scenario::

    snap = snapshot(
        nodes=[node_view("n1", slots=2, used=1), node_view("n2", slots=2)],
        queue=[pending("p1", constraints={"zone": "a"})],
    )

Ids are plain strings here and are wrapped in their ``NewType`` on the way in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from corral.core.ids import DefinitionId, EngineId, NodeId, Round, Upid
from corral.core.model import (
    NO_RESOURCES,
    ConstraintValue,
    Engine,
    ProcessRecord,
    ProcessRequest,
    Resources,
)
from corral.core.process_states import ProcessState, QueueingMode, RestartMode
from corral.core.snapshot import EngineView, NodeView, Pending, Snapshot

DEFAULT_ENGINE = "default"


def engine(engine_id: str = DEFAULT_ENGINE, **settings: Any) -> Engine:
    """An :class:`Engine`; ``settings`` are any of its other fields (``slots=2``, …)."""
    return Engine(EngineId(engine_id), **settings)


def engine_view(
    engine_id: str = DEFAULT_ENGINE,
    *,
    booting: int = 0,
    maximum_vms: int = 0,
    trouble: str | None = None,
) -> EngineView:
    return EngineView(EngineId(engine_id), booting, maximum_vms, trouble)


def node_view(
    node_id: str = "n1",
    *,
    engine: str = DEFAULT_ENGINE,
    slots: int = 4,
    used: int = 0,
    properties: Mapping[str, str] | None = None,
    exclusive_tags: Iterable[str] = (),
    accepting: bool = True,
    room: Resources | None = None,
    ahead: int = 0,
    queued: int = 0,
    withdrawing: int = 0,
) -> NodeView:
    return NodeView(
        node_id=NodeId(node_id),
        engine=EngineId(engine),
        properties=dict(properties or {}),
        slots=slots,
        used=used,
        exclusive_tags=frozenset(exclusive_tags),
        accepting=accepting,
        room=room,
        ahead=ahead,
        queued=queued,
        withdrawing=withdrawing,
    )


def pending(
    upid: str = "p1",
    *,
    round: int = 0,
    constraints: Mapping[str, ConstraintValue] | None = None,
    engine: str | None = None,
    node_exclusive: str | None = None,
    queueing_mode: QueueingMode = QueueingMode.ALWAYS,
    is_restart: bool = False,
    has_reason: bool = False,
    resources: Resources = NO_RESOURCES,
) -> Pending:
    """A queued process; ``engine`` pins it (``execution_engine_id``)."""
    return Pending(
        upid=Upid(upid),
        round=Round(round),
        constraints=dict(constraints or {}),
        execution_engine_id=EngineId(engine) if engine is not None else None,
        node_exclusive=node_exclusive,
        queueing_mode=queueing_mode,
        is_restart=is_restart,
        has_reason=has_reason,
        resources=resources,
    )


def snapshot(
    *,
    nodes: Iterable[NodeView] = (),
    queue: Iterable[Pending] = (),
    engines: Iterable[EngineView | str] | None = None,
) -> Snapshot:
    """A matchmaker snapshot; ``engines`` in configuration order, ``["default"]`` if omitted.

    Engines may be given by id; they then have nothing booting and no ``maximum_vms``.
    """
    listed = [DEFAULT_ENGINE] if engines is None else list(engines)
    views = tuple(e if isinstance(e, EngineView) else engine_view(e) for e in listed)
    return Snapshot(engines=views, nodes=tuple(nodes), queue=tuple(queue))


def process_record(
    upid: str = "p1",
    *,
    state: ProcessState = ProcessState.REQUESTED,
    definition_id: str = "def1",
    queueing_mode: QueueingMode = QueueingMode.ALWAYS,
    restart_mode: RestartMode = RestartMode.ABNORMAL,
    configuration: Mapping[str, Any] | None = None,
    constraints: Mapping[str, ConstraintValue] | None = None,
    engine: str | None = None,
    node_exclusive: str | None = None,
    **fields: Any,
) -> ProcessRecord:
    """A :class:`ProcessRecord` and its request; ``fields`` set other record fields
    (``round=2``, ``assigned=NodeId("n1")``, …)."""
    request = ProcessRequest(
        definition_id=DefinitionId(definition_id),
        configuration=dict(configuration or {}),
        constraints=dict(constraints or {}),
        queueing_mode=queueing_mode,
        restart_mode=restart_mode,
        execution_engine_id=EngineId(engine) if engine is not None else None,
        node_exclusive=node_exclusive,
    )
    record = ProcessRecord(
        upid=Upid(upid),
        request=request,
        state=state,
        scheduled=state is not ProcessState.UNSCHEDULED,
    )
    return replace(record, **fields) if fields else record
