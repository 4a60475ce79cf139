"""Frozen records: engines, definitions, processes and nodes, and their document form.

Records are immutable; a change is a new record (``dataclasses.replace``, or
:func:`evolved` for process records on the dispatcher's hot paths). ``as_doc`` and
``from_doc`` give the JSON document the store keeps and the API returns, so the two can
never drift apart.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from corral.core.ids import DefinitionId, EngineId, NodeId, Round, Upid
from corral.core.node_states import IdleBehavior, NodeState
from corral.core.process_states import ProcessState, QueueingMode, RestartMode

#: definition types: "supd" is the EPU's name (supervisord-monitored), "exec" a plain exec
DEFINITION_TYPES = ("supd", "exec")

_FIRST_ROUND = Round(0)
MAX_DISPATCH_ATTEMPTS = 5
#: one shared empty mapping for the many records without configuration or constraints
_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _shared(text: str | None) -> str | None:
    """Many records repeat the same few strings (node, engine, reason): keep one copy."""
    return None if text is None else sys.intern(text)


ConstraintValue = str | int | float | bool | list[str | int | float | bool]


@dataclass(frozen=True, slots=True, order=True)
class Resources:
    """What a process needs, or what a node has: CPUs, memory in MiB, GPUs."""

    cpus: float = 0.0
    memory: int = 0
    gpus: int = 0

    def __bool__(self) -> bool:
        return bool(self.cpus or self.memory or self.gpus)

    def fits_in(self, free: Resources) -> bool:
        return self.cpus <= free.cpus and self.memory <= free.memory and self.gpus <= free.gpus

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpus + other.cpus, self.memory + other.memory, self.gpus + other.gpus)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.cpus - other.cpus, self.memory - other.memory, self.gpus - other.gpus)

    def describe(self) -> str:
        parts = [f"{self.cpus:g} cpus", f"{self.memory} MiB memory"]
        if self.gpus:
            parts.append(f"{self.gpus} gpus")
        return ", ".join(parts)

    def as_doc(self) -> dict[str, Any]:
        return {"cpus": self.cpus, "memory": self.memory, "gpus": self.gpus}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any] | None) -> Resources:
        if not doc:
            return NO_RESOURCES
        return cls(float(doc.get("cpus", 0)), int(doc.get("memory", 0)), int(doc.get("gpus", 0)))


NO_RESOURCES = Resources()


@dataclass(frozen=True, slots=True)
class InstanceType:
    """A kind of machine a driver can boot (Arvados' instance types)."""

    name: str
    #: the provider's own name for it (an EC2 instance type, a libcloud size id)
    provider_type: str
    vcpus: float
    #: MiB
    ram: int
    gpus: int = 0
    #: per hour, in whatever currency the operator thinks in
    price: float = 0.0
    preemptible: bool = False

    @property
    def capacity(self) -> Resources:
        return Resources(self.vcpus, self.ram, self.gpus)


@dataclass(frozen=True, slots=True)
class Engine:
    """An execution engine: a kind of node, and how many of them the pool keeps."""

    engine_id: EngineId
    driver: str = "local"
    slots: int = 4
    base_need: int = 1
    maximum_vms: int = 4
    labels: Mapping[str, str] = field(default_factory=dict)
    heartbeat_period: float = 1.0
    heartbeat_warning: float = 3.0
    heartbeat_missing: float = 6.0
    boot_timeout: float = 30.0
    #: seconds between SIGTERM and SIGKILL when a process is stopped
    terminate_grace: float = 10.0
    #: free slots the pool keeps beyond what the queue needs, so a burst starts at once
    spare_slots: int = 0
    #: seconds a node must stay unoccupied before the pool may retire it
    idle_timeout: float = 60.0
    #: placements of one process whose node is lost before it starts, before it FAILs
    max_dispatch_attempts: int = MAX_DISPATCH_ATTEMPTS
    #: launches a node may hold, unstarted, while its slots are busy (None: twice its
    #: ``slots``), so a freed slot takes the next process without a round trip. The queue
    #: must cover that round trip (the end's commit, the next placement's, the send) while
    #: the node's slots turn over: under a stream of short jobs, a queue of ``slots`` ran
    #: dry at half the exits, one of twice that at fewer than one in ten
    launch_ahead: int | None = None
    #: the kinds of machine its nodes may be, cheapest first; none: nodes are slots only
    instance_types: tuple[InstanceType, ...] = ()
    #: the user its processes run as (the agent must be root to switch); None: the agent's
    run_as: str | None = None
    #: let its processes run as root when the agent is root and run_as is not set
    allow_root: bool = False
    #: seconds an agent cut off from the dispatcher waits before stopping its processes
    #: (None: it never does); lets an at-most-once process be started again safely
    stop_after_disconnect: float | None = None
    #: the newest bytes each process's stdout and stderr log keeps on its node; older ones
    #: are dropped (0: all; None: the agent's default, 100 MiB)
    log_max_bytes: int | None = None
    #: seconds the logs of a process that no longer runs on a node stay there unwritten
    #: (0: always; None: the agent's default, a day)
    log_retention: int | None = None

    @property
    def ahead(self) -> int:
        """``launch_ahead``, with its default resolved."""
        return 2 * self.slots if self.launch_ahead is None else self.launch_ahead

    def instance_type(self, name: str | None) -> InstanceType | None:
        return next((t for t in self.instance_types if t.name == name), None)

    #: settings of the engine's driver (the fake driver's faults, say)
    driver_options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Executable:
    exec: str
    argv: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    working_directory: str | None = None
    #: what each of its processes needs of a node (placed on instance types that have it)
    resources: Resources = NO_RESOURCES

    def as_doc(self) -> dict[str, Any]:
        doc = {
            "exec": self.exec,
            "argv": list(self.argv),
            "env": dict(self.env),
            "working_directory": self.working_directory,
        }
        if self.resources:
            doc["resources"] = self.resources.as_doc()
        return doc

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Executable:
        return cls(
            exec=doc["exec"],
            argv=tuple(doc.get("argv") or ()),
            env=dict(doc.get("env") or {}),
            working_directory=doc.get("working_directory"),
            resources=Resources.from_doc(doc.get("resources")),
        )


@dataclass(frozen=True, slots=True)
class Definition:
    definition_id: DefinitionId
    definition_type: str
    executable: Executable
    name: str | None = None
    description: str | None = None

    def as_doc(self) -> dict[str, Any]:
        return {
            "definition_id": self.definition_id,
            "definition_type": self.definition_type,
            "executable": self.executable.as_doc(),
            "name": self.name,
            "description": self.description,
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Definition:
        return cls(
            definition_id=DefinitionId(doc["definition_id"]),
            definition_type=doc["definition_type"],
            executable=Executable.from_doc(doc["executable"]),
            name=doc.get("name"),
            description=doc.get("description"),
        )


@dataclass(frozen=True, slots=True)
class ProcessRequest:
    """What ``schedule_process`` asked for: fixed once a process has been scheduled."""

    definition_id: DefinitionId
    name: str | None = None
    configuration: Mapping[str, Any] = field(default_factory=dict)
    subscribers: tuple[str, ...] = ()
    constraints: Mapping[str, ConstraintValue] = field(default_factory=dict)
    queueing_mode: QueueingMode = QueueingMode.ALWAYS
    restart_mode: RestartMode = RestartMode.ABNORMAL
    execution_engine_id: EngineId | None = None
    node_exclusive: str | None = None
    #: from its definition, or configuration.corral.resources; fixed when scheduled
    resources: Resources = NO_RESOURCES

    def as_doc(self) -> dict[str, Any]:
        return {
            "resources": self.resources.as_doc() if self.resources else None,
            "definition_id": self.definition_id,
            "name": self.name,
            "configuration": dict(self.configuration),
            "subscribers": list(self.subscribers),
            "constraints": dict(self.constraints),
            "queueing_mode": self.queueing_mode.value,
            "restart_mode": self.restart_mode.value,
            "execution_engine_id": self.execution_engine_id,
            "node_exclusive": self.node_exclusive,
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> ProcessRequest:
        engine = doc.get("execution_engine_id")
        return cls(
            definition_id=DefinitionId(sys.intern(doc["definition_id"])),
            name=doc.get("name"),
            configuration=doc.get("configuration") or _EMPTY,
            subscribers=tuple(doc.get("subscribers") or ()),
            constraints=doc.get("constraints") or _EMPTY,
            queueing_mode=QueueingMode(doc.get("queueing_mode") or "ALWAYS"),
            restart_mode=RestartMode(doc.get("restart_mode") or "ABNORMAL"),
            execution_engine_id=EngineId(engine) if engine else None,
            node_exclusive=doc.get("node_exclusive"),
            resources=Resources.from_doc(doc.get("resources")),
        )


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    """One process: its request, and where its current round stands."""

    upid: Upid
    request: ProcessRequest
    state: ProcessState
    round: Round = _FIRST_ROUND
    #: False until the first schedule_process (a create_process alone leaves it False)
    scheduled: bool = False
    assigned: NodeId | None = None
    hostname: str | None = None
    engine: EngineId | None = None
    pid: int | None = None
    #: how many times an OS process was started for it, over all rounds
    starts: int = 0
    exit_code: int | None = None
    signal: int | None = None
    #: restarts since the last healthy run; drives the backoff and max_attempts
    attempts: int = 0
    #: placements since it last started, lost before it could (max_dispatch_attempts)
    dispatches: int = 0
    waiting_reason: str | None = None
    #: why the process ended, or why its last round ended
    end_reason: str | None = None
    #: wall-clock time before which a delayed restart is not requested
    not_before: float | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    #: wall-clock time its node was disconnected (heartbeats missing), while it waits out
    #: its disconnect grace there; None once the node is back or the round ends
    disconnected_since: float | None = None
    #: the request id of the schedule_process call that last scheduled it: that call sent
    #: again (its answer was lost) is then known, and runs nothing a second time
    request_id: str | None = None

    def as_doc(self) -> dict[str, Any]:
        doc = self.request.as_doc()
        doc.update(
            upid=self.upid,
            state=int(self.state),
            round=self.round,
            scheduled=self.scheduled,
            assigned=self.assigned,
            hostname=self.hostname,
            engine=self.engine,
            pid=self.pid,
            starts=self.starts,
            exit_code=self.exit_code,
            signal=self.signal,
            attempts=self.attempts,
            dispatches=self.dispatches,
            waiting_reason=self.waiting_reason,
            end_reason=self.end_reason,
            not_before=self.not_before,
            created_at=self.created_at,
            updated_at=self.updated_at,
            started_at=self.started_at,
            ended_at=self.ended_at,
            disconnected_since=self.disconnected_since,
            request_id=self.request_id,
        )
        return doc

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> ProcessRecord:
        assigned, engine = doc.get("assigned"), doc.get("engine")
        return cls(
            upid=Upid(doc["upid"]),
            request=ProcessRequest.from_doc(doc),
            state=ProcessState(doc["state"]),
            round=Round(doc.get("round", 0)),
            scheduled=bool(doc.get("scheduled", False)),
            assigned=NodeId(sys.intern(assigned)) if assigned else None,
            hostname=_shared(doc.get("hostname")),
            engine=EngineId(sys.intern(engine)) if engine else None,
            pid=doc.get("pid"),
            starts=doc.get("starts", 0),
            exit_code=doc.get("exit_code"),
            signal=doc.get("signal"),
            attempts=doc.get("attempts", 0),
            dispatches=doc.get("dispatches", 0),
            waiting_reason=_shared(doc.get("waiting_reason")),
            end_reason=_shared(doc.get("end_reason")),
            not_before=doc.get("not_before"),
            created_at=doc.get("created_at", 0.0),
            updated_at=doc.get("updated_at", 0.0),
            started_at=doc.get("started_at"),
            ended_at=doc.get("ended_at"),
            disconnected_since=doc.get("disconnected_since"),
            request_id=doc.get("request_id"),
        )


#: each field of a process record, with its slot's getter and setter
_RECORD_SLOTS = tuple(
    (f.name, getattr(ProcessRecord, f.name).__get__, getattr(ProcessRecord, f.name).__set__)
    for f in fields(ProcessRecord)
)
_RECORD_FIELDS = frozenset(name for name, _, _ in _RECORD_SLOTS)


def evolved(record: ProcessRecord, **changes: Any) -> ProcessRecord:
    """``dataclasses.replace(record, **changes)`` at half the cost.

    Every state change of every process makes a new record, several per launch: replace's
    generic walk over the fields and the frozen ``__init__`` were a tenth of the
    dispatcher's time at a thousand launches a second. This copies slot by slot instead; a
    name that is not a field is refused as replace refuses it.
    """
    if not changes.keys() <= _RECORD_FIELDS:
        unknown = ", ".join(sorted(changes.keys() - _RECORD_FIELDS))
        raise TypeError(f"ProcessRecord has no field {unknown}")
    new = object.__new__(ProcessRecord)
    for name, get, set_ in _RECORD_SLOTS:
        set_(new, changes[name] if name in changes else get(record))
    return new


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A node as the dispatcher knows it: what the driver made and what its agent said."""

    node_id: NodeId
    engine: EngineId
    state: NodeState
    slots: int
    hostname: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    idle_behavior: IdleBehavior = IdleBehavior.RUN
    #: the driver's own handle for the instance
    instance_id: str | None = None
    created_at: float = 0.0
    #: the engine's instance type it was booted as (None: slots only)
    instance_type: str | None = None

    def properties(self) -> dict[str, str]:
        """What constraints are matched against: engine labels plus the node's own."""
        props = dict(self.labels)
        props["node_id"] = self.node_id
        props["engine"] = self.engine
        if self.hostname is not None:
            props["hostname"] = self.hostname
        return props

    def as_doc(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "engine": self.engine,
            "state": self.state.value,
            "slots": self.slots,
            "hostname": self.hostname,
            "labels": dict(self.labels),
            "idle_behavior": self.idle_behavior.value,
            "instance_id": self.instance_id,
            "created_at": self.created_at,
            "instance_type": self.instance_type,
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> NodeRecord:
        return cls(
            node_id=NodeId(doc["node_id"]),
            engine=EngineId(doc["engine"]),
            state=NodeState(doc["state"]),
            slots=doc["slots"],
            hostname=doc.get("hostname"),
            labels=dict(doc.get("labels") or {}),
            idle_behavior=IdleBehavior(doc.get("idle_behavior", "run")),
            instance_id=doc.get("instance_id"),
            created_at=doc.get("created_at", 0.0),
            instance_type=doc.get("instance_type"),
        )
