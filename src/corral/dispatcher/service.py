"""The EPU operations, as the API and the client see them.

Each operation validates its request, builds the next records through ``rounds``, saves
them through ``State`` and returns once they are durable. Results are plain dicts in the
public form (states as ``"500-RUNNING"``). An operation that changes something notes it in
the audit log with its ``actor`` (named by the API layer), in the same commit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any, Protocol

from corral.clock import Clock
from corral.config import Config
from corral.core.disconnect import is_at_most_once
from corral.core.ids import DefinitionId, NodeId, Round, Upid
from corral.core.model import (
    NO_RESOURCES,
    Definition,
    NodeRecord,
    ProcessRecord,
    ProcessRequest,
    Resources,
    evolved,
)
from corral.core.node_states import IdleBehavior
from corral.core.process_states import ProcessEvent, ProcessState
from corral.dispatcher import validation as check
from corral.dispatcher.audit import IN_PROCESS
from corral.dispatcher.events import EventBus, public_process
from corral.dispatcher.metrics import Metrics
from corral.dispatcher.rounds import moved
from corral.dispatcher.space import SpaceGuard
from corral.dispatcher.state import State
from corral.dispatcher.views import QueueView, Views
from corral.errors import Conflict, CorralError, InvalidRequest, NotFound, Unavailable, WaitTimeout

#: processes of a batch named in its audit entry (the entry stays small)
BATCH_NAMED = 1000
_STARTABLE = frozenset({ProcessState.ASSIGNED, ProcessState.PENDING, ProcessState.RUNNING})


class NodeSide(Protocol):
    """What the service needs from the node side (``dispatcher.nodes``)."""

    def kill(self, node_id: NodeId, upid: Upid, round_: Round) -> None: ...

    async def read_log(
        self, node_id: NodeId, upid: Upid, stream: str, offset: int, limit: int
    ) -> dict[str, Any]: ...

    def describe_nodes(self) -> list[dict[str, Any]]: ...

    def describe(self, node: NodeRecord) -> dict[str, Any]: ...

    def set_idle_behavior(self, node_id: NodeId, behavior: IdleBehavior) -> NodeRecord: ...

    def kill_node(self, node_id: NodeId) -> NodeRecord: ...

    def statistics(self) -> dict[str, Any]: ...


class Dispatcher:
    def __init__(
        self,
        state: State,
        config: Config,
        clock: Clock,
        nodes: NodeSide,
        events: EventBus,
        wake_mapper: Callable[[], None],
        metrics: Metrics | None = None,
        space: SpaceGuard | None = None,
        queue: QueueView | None = None,
    ) -> None:
        self._metrics = metrics
        self._space = space
        self._state = state
        self._config = config
        self._clock = clock
        self._nodes = nodes
        self._events = events
        self._wake_mapper = wake_mapper
        self._engines = {e.engine_id: e for e in config.engines}
        #: what operators read: the overview, pages of processes, histories, the audit log
        self.views = Views(state, config, clock, nodes, metrics, queue)

    def _note(self, actor: str, action: str, target: str, /, **detail: Any) -> None:
        """Note an action in the audit log; it commits with what this loop turn saves."""
        self._state.audit.note(actor, action, target, self._clock.time(), detail or None)

    def _check_space(self) -> None:
        if self._space is not None:
            self._space.check()

    # -- definitions ----------------------------------------------------------

    async def create_definition(
        self,
        definition_id: str,
        definition_type: str,
        executable: dict[str, Any],
        name: str | None = None,
        description: str | None = None,
        *,
        actor: str = IN_PROCESS,
    ) -> dict[str, Any]:
        definition = check.definition(definition_id, definition_type, executable, name, description)
        existing = self._state.definitions.get(definition.definition_id)
        if existing is not None:
            if existing == definition:
                return existing.as_doc()
            raise Conflict(
                f"definition {definition_id!r} exists with other parameters; "
                "use update_definition to change it",
                field="definition_id",
            )
        self._check_space()
        self._note(actor, "create_definition", definition_id)
        await self._state.save_definition(definition)
        return definition.as_doc()

    async def update_definition(
        self,
        definition_id: str,
        definition_type: str,
        executable: dict[str, Any],
        name: str | None = None,
        description: str | None = None,
        *,
        actor: str = IN_PROCESS,
    ) -> dict[str, Any]:
        existing = self._definition(definition_id)
        definition = check.definition(definition_id, definition_type, executable, name, description)
        self._check_space()
        if definition != existing:
            self._note(actor, "update_definition", definition_id)
        await self._state.save_definition(definition)
        return definition.as_doc()

    def describe_definition(self, definition_id: str) -> dict[str, Any]:
        return self._definition(definition_id).as_doc()

    async def remove_definition(self, definition_id: str, *, actor: str = IN_PROCESS) -> None:
        self._definition(definition_id)
        users = [
            r.upid
            for r in self._state.processes.values()
            if r.request.definition_id == definition_id and not r.state.is_terminal
        ]
        if users:
            shown = ", ".join(sorted(users)[:5]) + (" …" if len(users) > 5 else "")
            raise Conflict(
                f"definition {definition_id!r} is used by {len(users)} unfinished "
                f"process(es): {shown}; terminate them first",
                field="definition_id",
            )
        self._note(actor, "remove_definition", definition_id)
        await self._state.delete_definition(DefinitionId(definition_id))

    def list_definitions(self) -> list[dict[str, Any]]:
        return [d.as_doc() for d in self._state.definitions.values()]

    def _definition(self, definition_id: str) -> Definition:
        definition = self._state.definitions.get(DefinitionId(definition_id))
        if definition is None:
            raise NotFound(f"no definition {definition_id!r}", field="definition_id")
        return definition

    def _known_definition(self, definition_id: str) -> DefinitionId:
        check.check_id(definition_id, "definition_id")
        if definition_id not in self._state.definitions:
            raise InvalidRequest(
                f"definition {definition_id!r} does not exist; create it first",
                field="definition_id",
            )
        return DefinitionId(definition_id)

    # -- processes ------------------------------------------------------------

    async def create_process(
        self, upid: str, definition_id: str, name: str | None = None, *, actor: str = IN_PROCESS
    ) -> dict[str, Any]:
        check.check_id(upid, "upid")
        definition = self._known_definition(definition_id)
        existing = self._state.processes.get(Upid(upid))
        if existing is not None:
            request = existing.request
            if request.definition_id != definition or request.name != name:
                raise Conflict(
                    f"process {upid!r} exists with definition {request.definition_id!r} and "
                    f"name {request.name!r}",
                    field="upid",
                )
            await self._state.durable(existing.upid)
            return public_process(existing)
        now = self._clock.time()
        record = ProcessRecord(
            upid=Upid(upid),
            request=ProcessRequest(definition_id=definition, name=name),
            state=ProcessState.UNSCHEDULED,
            created_at=now,
            updated_at=now,
        )
        self._check_space()
        self._note(actor, "create_process", upid, definition_id=definition)
        await self._state.save_processes([record])
        return public_process(record)

    async def schedule_process(
        self,
        upid: str,
        definition_id: str | None = None,
        configuration: dict[str, Any] | None = None,
        subscribers: list[str] | None = None,
        constraints: dict[str, Any] | None = None,
        queueing_mode: str | None = None,
        restart_mode: str | None = None,
        execution_engine_id: str | None = None,
        node_exclusive: str | None = None,
        name: str | None = None,
        request_id: str | None = None,
        *,
        actor: str = IN_PROCESS,
    ) -> dict[str, Any]:
        """``request_id`` names the call: sent again, it runs nothing a second time."""
        record, changed = self._scheduled(
            upid,
            request_id,
            definition_id=definition_id,
            configuration=configuration,
            subscribers=subscribers,
            constraints=constraints,
            queueing_mode=queueing_mode,
            restart_mode=restart_mode,
            execution_engine_id=execution_engine_id,
            node_exclusive=node_exclusive,
            name=name,
        )
        if changed:
            self._check_space()
            self._note(actor, "schedule_process", upid, round=record.round)
            committed = self._state.save_processes([record])
            # Woken before the commit lands, the mapper's placement joins its transaction:
            # one fsync, not two, before the launch (sent once the placement is durable).
            self._wake_mapper()
            await asyncio.shield(committed)  # a caller who gives up must not cancel it
        else:
            await self._state.durable(record.upid)
        return self._latest(record)

    async def schedule_processes(
        self,
        processes: list[dict[str, Any]],
        request_id: str | None = None,
        *,
        actor: str = IN_PROCESS,
    ) -> list[dict[str, Any]]:
        """Schedule many processes at once: all are accepted, or none (the error names the
        item). Each item holds ``upid`` and the parameters of ``schedule_process``;
        ``request_id`` names the whole call."""
        records: list[ProcessRecord] = []
        changed: list[ProcessRecord] = []
        seen: set[str] = set()
        for i, item in enumerate(processes):
            params = dict(item)
            upid = params.pop("upid", None)
            try:
                if upid in seen:
                    raise InvalidRequest(f"upid {upid!r} appears twice in the batch", field="upid")
                record, is_new = self._scheduled(upid, request_id, **params)
            except TypeError as exc:
                raise InvalidRequest(f"processes[{i}]: {exc}", field=f"processes[{i}]") from None
            except CorralError as exc:
                field = f"processes[{i}]" + (f".{exc.field}" if exc.field else "")
                raise type(exc)(f"processes[{i}]: {exc.message}", field=field) from None
            seen.add(record.upid)
            records.append(record)
            if is_new:
                changed.append(record)
        if changed:
            self._check_space()
            # a batch is one entry; the first BATCH_NAMED of its processes are named in it
            upids = [r.upid for r in changed[:BATCH_NAMED]]
            self._note(actor, "schedule_processes", f"{len(changed)} processes", upids=upids)
            committed = self._state.save_processes(changed)
            self._wake_mapper()  # as in schedule_process: placements join this commit
            await asyncio.shield(committed)
        for record in records:
            await self._state.durable(record.upid)
        return [self._latest(r) for r in records]

    def _scheduled(
        self,
        upid: Any,
        request_id: str | None,
        definition_id: str | None = None,
        configuration: dict[str, Any] | None = None,
        subscribers: list[str] | None = None,
        constraints: dict[str, Any] | None = None,
        queueing_mode: str | None = None,
        restart_mode: str | None = None,
        execution_engine_id: str | None = None,
        node_exclusive: str | None = None,
        name: str | None = None,
    ) -> tuple[ProcessRecord, bool]:
        """The record ``schedule_process`` leads to, and whether it is a change at all."""
        check.check_id(upid, "upid")
        asked: dict[str, Any] = {
            "definition_id": None
            if definition_id is None
            else self._known_definition(definition_id),
            "name": name,
            "configuration": check.configuration(configuration),
            "subscribers": check.subscribers(subscribers),
            "constraints": check.constraints(constraints),
            "queueing_mode": check.queueing_mode(queueing_mode),
            "restart_mode": check.restart_mode(restart_mode),
            "execution_engine_id": check.engine(execution_engine_id, self._engines),
            "node_exclusive": node_exclusive,
        }
        given = {k: v for k, v in asked.items() if v is not None}
        existing = self._state.processes.get(Upid(upid))
        now = self._clock.time()
        if existing is None:
            if "definition_id" not in given:
                raise InvalidRequest(
                    f"process {upid!r} does not exist, so definition_id is required",
                    field="definition_id",
                )
            record = ProcessRecord(
                upid=Upid(upid),
                request=ProcessRequest(**given, resources=self._resources(given)),
                state=ProcessState.UNSCHEDULED,
                created_at=now,
            )
        elif not existing.scheduled:
            request = self._merged(existing, given, lenient=True)
            needs = self._resources(
                {"definition_id": request.definition_id, "configuration": request.configuration}
            )
            record = replace(existing, request=replace(request, resources=needs))
        else:
            self._merged(existing, given, lenient=False)
            if not existing.state.is_terminal:
                return existing, False
            if request_id is not None and request_id == existing.request_id:
                return existing, False  # this very call, sent again: its round has run
            record = existing
        check.disconnect_policy(record.request)
        record = moved(
            record,
            ProcessEvent.SCHEDULE,
            now,
            scheduled=True,
            attempts=0,
            request_id=request_id,
        )
        if record.round == 0:
            record = evolved(record, round=Round(1))
        return record, True

    def _resources(self, given: dict[str, Any]) -> Resources:
        """What the process needs: ``configuration.corral.resources``, else its
        definition's."""
        corral = (given.get("configuration") or {}).get("corral")
        if isinstance(corral, dict) and "resources" in corral:
            return check.resources(corral["resources"], "configuration.corral.resources")
        definition = self._state.definitions.get(given["definition_id"])
        return definition.executable.resources if definition is not None else NO_RESOURCES

    def _merged(
        self, existing: ProcessRecord, given: dict[str, Any], lenient: bool
    ) -> ProcessRequest:
        """The request ``given`` asks for, which must agree with what ``existing`` fixed.

        A created-but-unscheduled process fixed only its definition and name; a scheduled
        one fixed everything.
        """
        current = existing.request
        fixed = ("definition_id", "name") if lenient else tuple(given)
        differing = [k for k in fixed if k in given and given[k] != getattr(current, k)]
        if differing:
            raise Conflict(
                f"process {existing.upid!r} was scheduled with other {', '.join(differing)}; "
                "use another upid, or terminate and remove this one",
                field=differing[0],
            )
        return replace(current, **given)

    def describe_process(self, upid: str) -> dict[str, Any]:
        return public_process(self._process(upid, stored=True))

    def describe_processes(self) -> list[dict[str, Any]]:
        return [public_process(r) for r in self._state.stored_processes()]

    def _latest(self, record: ProcessRecord) -> dict[str, Any]:
        """The process as the store holds it now, ``record`` being committed; as ``record``
        says if it has ended and been forgotten since (``core.retention``)."""
        return public_process(self._state.stored(record.upid) or record)

    def _process(self, upid: str, stored: bool = False) -> ProcessRecord:
        """Its record, to act on; with ``stored``, as the store holds it, to show."""
        state = self._state
        record = state.stored(Upid(upid)) if stored else state.processes.get(Upid(upid))
        if record is None:
            raise NotFound(self._config.retention.not_found(upid), field="upid")
        return record

    async def terminate_process(self, upid: str, *, actor: str = IN_PROCESS) -> dict[str, Any]:
        record = self._process(upid)
        now = self._clock.time()
        if record.state.is_terminal or record.state is ProcessState.TERMINATING:
            await self._state.durable(record.upid)
            return public_process(record)
        self._note(actor, "terminate_process", upid, state=str(record.state))
        if record.state in (ProcessState.PENDING, ProcessState.RUNNING):
            new = moved(record, ProcessEvent.TERMINATE, now, end_reason="terminate requested")
            await self._state.save_processes([new])
            assert record.assigned is not None
            self._nodes.kill(record.assigned, record.upid, record.round)
        else:
            new = moved(record, ProcessEvent.TERMINATED, now, end_reason="terminated before it ran")
            await self._state.save_processes([new])
            self._wake_mapper()
        return public_process(new)

    async def restart_process(self, upid: str, *, actor: str = IN_PROCESS) -> dict[str, Any]:
        record = self._process(upid)
        now = self._clock.time()
        if record.state is ProcessState.UNSCHEDULED:
            raise Conflict(
                f"process {upid!r} was never scheduled; use schedule_process", field="upid"
            )
        if record.state.is_queued:
            return public_process(record)
        if record.disconnected_since is not None and is_at_most_once(record.request):
            raise Conflict(
                f"process {upid!r} is at-most-once and its node {record.assigned} is "
                "disconnected: it may still run there, so it is not started again until the "
                "node is back or its disconnect grace is over",
                field="upid",
            )
        if record.state.is_terminal:
            new = moved(record, ProcessEvent.SCHEDULE, now, attempts=0)
        else:
            new = moved(
                record,
                ProcessEvent.RESTART_NOW,
                now,
                attempts=0,
                end_reason="restart requested",
                waiting_reason="restart requested",
            )
        self._note(actor, "restart_process", upid, state=str(record.state), round=new.round)
        await self._state.save_processes([new])
        if record.state in _STARTABLE or record.state is ProcessState.TERMINATING:
            assert record.assigned is not None
            self._nodes.kill(record.assigned, record.upid, record.round)
        self._wake_mapper()
        return self._latest(new)

    async def wait_process(
        self,
        upid: str,
        states: list[str] | None,
        timeout: float,  # noqa: ASYNC109 - the seed API's parameter name
    ) -> dict[str, Any]:
        wanted = self._parse_states(states)
        record = self._process(upid)
        deadline = self._clock.monotonic() + max(0.0, timeout)
        while not (record.state in wanted or record.state.is_terminal):
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                raise WaitTimeout(
                    f"process {upid!r} is still {record.state} after {timeout:g} s", field="upid"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._events.next_change(record.upid), remaining)
            record = self._process(upid)  # NotFound if it ended and was forgotten meanwhile
        await self._state.durable(record.upid)
        return public_process(record)

    @staticmethod
    def _parse_states(states: list[str] | None) -> frozenset[ProcessState]:
        if not states:
            return frozenset()
        parsed = set()
        for text in states:
            try:
                parsed.add(ProcessState.parse(text))
            except ValueError:
                names = ", ".join(str(s) for s in ProcessState)
                raise InvalidRequest(
                    f"state {text!r} is not a process state; expected one of {names}",
                    field="state",
                ) from None
        return frozenset(parsed)

    async def read_log(self, upid: str, stream: str, offset: int, limit: int) -> dict[str, Any]:
        record = self._process(upid)
        if stream not in ("stdout", "stderr"):
            raise InvalidRequest("stream must be stdout or stderr", field="stream")
        if offset < 0 or limit <= 0:
            raise InvalidRequest("offset must be ≥ 0 and limit > 0", field="offset")
        node_id = record.assigned
        if node_id is None:
            if record.starts == 0:
                return {
                    "upid": upid,
                    "stream": stream,
                    "data": "",
                    "offset": offset,
                    "next_offset": offset,
                    "size": 0,
                }
            # for good, not for a while: no point in asking again (Unavailable says "retry")
            raise NotFound(
                f"the logs of {upid!r} are gone with the node it last ran on", field="upid"
            )
        chunk = await self._nodes.read_log(
            node_id, record.upid, stream, offset, min(limit, 1 << 20)
        )
        return {"upid": upid, "stream": stream, "offset": offset, **chunk}

    def events(self, upid: str | None) -> AsyncIterator[dict[str, Any]]:
        return self._events.stream(upid)

    # -- introspection --------------------------------------------------------

    def list_nodes(self) -> list[dict[str, Any]]:
        return self._nodes.describe_nodes()

    def metrics(self) -> bytes:
        """The Prometheus text exposition of this dispatcher's metrics."""
        if self._metrics is None:
            raise Unavailable("this dispatcher keeps no metrics")
        return self._metrics.exposition()

    def describe_node(self, node_id: str) -> dict[str, Any]:
        for node in self._nodes.describe_nodes():
            if node["node_id"] == node_id:
                return node
        raise NotFound(f"no node {node_id!r}", field="node_id")

    async def node_action(
        self, node_id: str, action: str, *, actor: str = IN_PROCESS
    ) -> dict[str, Any]:
        """``hold``, ``drain`` or ``run`` set the node's idle behaviour; ``kill`` retires it
        now, its processes following their restart modes."""
        before = self._state.nodes.get(NodeId(node_id))
        if action == "kill":
            record = self._nodes.kill_node(NodeId(node_id))
        else:
            try:
                behavior = IdleBehavior(action)
            except ValueError:
                raise InvalidRequest(
                    f"unknown node action {action!r}; expected hold, drain, run or kill",
                    field="action",
                ) from None
            record = self._nodes.set_idle_behavior(NodeId(node_id), behavior)
        if before is None or record != before:
            self._note(actor, "node_action", node_id, action=action)
        await self._state.flush()
        # a killed node may be forgotten already: describe the record it left
        return self._nodes.describe(self._state.nodes.get(record.node_id, record))

    def list_engines(self) -> list[dict[str, Any]]:
        return [
            {
                "engine_id": e.engine_id,
                "driver": e.driver,
                "slots": e.slots,
                "base_need": e.base_need,
                "maximum_vms": e.maximum_vms,
                "labels": dict(e.labels),
                "default": i == 0,
            }
            for i, e in enumerate(self._config.engines)
        ]

    def dump(self) -> dict[str, Any]:
        counts = self._state.stored_counts()
        by_state = {str(state): counts[state] for state in sorted(counts)}
        return {
            "engines": self.list_engines(),
            "nodes": self.list_nodes(),
            "processes": {"total": counts.total(), "by_state": by_state},
            "queue": list(self._state.queue)[:1000],
            "queue_length": len(self._state.queue),
            "delayed_restarts": len(self._state.delayed),
            "definitions": len(self._state.definitions),
            "agents": self._nodes.statistics(),
        }
