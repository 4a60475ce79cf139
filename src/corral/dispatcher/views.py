"""What operators read: the overview, pages of processes, histories, the audit log, and what
the dispatcher knows of computations and pipelines.

Read models over the live tables, built at each request: filtering, sorting and paging
happen here, so the dashboard never downloads ten thousand records to show fifty. Results
are plain dicts in the public form (states as ``"500-RUNNING"``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from corral.clock import Clock
from corral.config import Config
from corral.core.ids import Upid
from corral.core.model import ProcessRecord
from corral.core.node_states import NodeState
from corral.core.process_states import ProcessState
from corral.dispatcher.metrics import Metrics
from corral.dispatcher.state import State
from corral.errors import InvalidRequest, NotFound

#: the definition of computations' workers (``corral.compute.reservation.WORKER_DEFINITION``)
COMPUTE_WORKER = "corral-compute-worker"
#: pipeline workers run definition ``pipeline-<queue>`` (``corral pipeline scale``)
PIPELINE_PREFIX = "pipeline-"
#: the largest page of processes one request may ask for
MAX_PAGE = 500

_SORT_KEYS: dict[str, Callable[[ProcessRecord], Any]] = {
    "created": lambda r: (r.created_at, r.upid),
    "updated": lambda r: (r.updated_at, r.upid),
    "upid": lambda r: r.upid,
    "state": lambda r: (int(r.state), r.upid),
    "engine": lambda r: (r.engine or r.request.execution_engine_id or "", r.upid),
    "node": lambda r: (r.assigned or "", r.upid),
    "round": lambda r: (r.round, r.upid),
    "starts": lambda r: (r.starts, r.upid),
}
SORTS = tuple(_SORT_KEYS)


class NodeLister(Protocol):
    def describe_nodes(self) -> list[dict[str, Any]]: ...


class QueueView(Protocol):
    """What the views need of an event queue the dispatcher hosts (``QueueServer``)."""

    def describe(self, limit: int) -> dict[str, Any]: ...


def process_row(record: ProcessRecord) -> dict[str, Any]:
    """One line of the processes table: what it shows, and nothing more."""
    return {
        "upid": record.upid,
        "name": record.request.name,
        "definition_id": record.request.definition_id,
        "state": str(record.state),
        "engine": record.engine or record.request.execution_engine_id,
        "node": record.assigned,
        "round": record.round,
        "starts": record.starts,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "waiting_reason": record.waiting_reason,
    }


class Views:
    def __init__(
        self,
        state: State,
        config: Config,
        clock: Clock,
        nodes: NodeLister,
        metrics: Metrics | None = None,
        queue: QueueView | None = None,
    ) -> None:
        self._state = state
        self._config = config
        self._clock = clock
        self._nodes = nodes
        self._metrics = metrics
        self._queue = queue

    def overview(self) -> dict[str, Any]:
        """Processes by state, the queue, nodes by state and engine, price and launches."""
        now = self._clock.time()
        by_state = self._state.stored_counts()  # kept as processes change: no walk over them
        nodes = self._nodes.describe_nodes()
        engines: dict[str, dict[str, Any]] = {
            e.engine_id: {"nodes": 0, "by_state": Counter(), "slots": 0, "used": 0}
            for e in self._config.engines
        }
        price = 0.0
        for node in nodes:
            engine = engines.setdefault(
                node["engine"], {"nodes": 0, "by_state": Counter(), "slots": 0, "used": 0}
            )
            engine["nodes"] += 1
            engine["by_state"][node["state"]] += 1
            if node["state"] != NodeState.GONE.value:
                engine["slots"] += node["slots"]
                engine["used"] += node["used"]
                price += node.get("price") or 0.0
        metrics = self._metrics
        launches = metrics.launches(now) if metrics is not None else []
        return {
            "time": now,
            "processes": {
                "total": by_state.total(),
                "by_state": {str(s): n for s, n in sorted(by_state.items())},
            },
            "queue": {
                "length": len(self._state.queue),
                "longest_wait": metrics.longest_wait() if metrics is not None else None,
                "delayed_restarts": len(self._state.delayed),
            },
            "nodes": {
                "total": len(nodes),
                "by_state": dict(Counter(n["state"] for n in nodes)),
                "by_health": dict(Counter(n["health"] for n in nodes)),
                "by_engine": {
                    name: {**e, "by_state": dict(e["by_state"])} for name, e in engines.items()
                },
            },
            "pool_price": round(price, 6),
            "launches_per_minute": [{"minute": m, "count": c} for m, c in launches],
        }

    def processes(
        self,
        *,
        states: Iterable[str] = (),
        engine: str | None = None,
        node: str | None = None,
        definition: str | None = None,
        text: str | None = None,
        sort: str = "created",
        descending: bool = True,
        offset: int = 0,
        limit: int = 50,
    ) -> dict[str, Any]:
        """One page of the processes that match every filter given, and how many match.

        ``text`` matches part of the upid or name, ignoring case; ``states`` accepts every
        spelling ``ProcessState.parse`` does.
        """
        wanted = _parse_states(states)
        if sort not in _SORT_KEYS:
            raise InvalidRequest(f"sort must be one of {', '.join(SORTS)}", field="sort")
        if not 1 <= limit <= MAX_PAGE or offset < 0:
            raise InvalidRequest(f"limit must be 1 to {MAX_PAGE}, offset ≥ 0", field="limit")
        needle = text.lower() if text else None
        found = [
            r
            for r in self._state.stored_processes()
            if (not wanted or r.state in wanted)
            and (engine is None or (r.engine or r.request.execution_engine_id) == engine)
            and (node is None or r.assigned == node)
            and (definition is None or r.request.definition_id == definition)
            and (needle is None or _mentions(r, needle))
        ]
        found.sort(key=_SORT_KEYS[sort], reverse=descending)
        return {
            "time": self._clock.time(),
            "total": len(found),
            "offset": offset,
            "limit": limit,
            "items": [process_row(r) for r in found[offset : offset + limit]],
            "states": [str(s) for s in ProcessState],
            "engines": [e.engine_id for e in self._config.engines],
            "sorts": list(SORTS),
        }

    def history(self, upid: str) -> dict[str, Any]:
        """The process's last state changes, oldest first, with their times."""
        if self._state.stored(Upid(upid)) is None:
            raise NotFound(self._config.retention.not_found(upid), field="upid")
        steps = self._state.history.of(Upid(upid))
        return {
            "upid": upid,
            "steps": [step.as_doc() for step in steps],
            "kept": self._state.history.limit,
        }

    def audit_log(
        self, limit: int = 100, before: int | None = None, target: str | None = None
    ) -> dict[str, Any]:
        """The newest entries first; ``next_before`` pages back (None: no older entry)."""
        entries = self._state.audit.entries(limit, before, target)
        more = len(entries) == limit and entries[-1].id > 1
        return {
            "entries": [entry.as_doc() for entry in entries],
            "next_before": entries[-1].id if more else None,
            "kept": self._state.audit.limit,
        }

    async def record(self, actor: str, action: str, target: str) -> None:
        """Note an action that changes no table (a dashboard log-in) and wait until it is
        durable."""
        self._state.audit.note(actor, action, target, self._clock.time())
        await self._state.flush()

    def computations(self) -> dict[str, Any]:
        """Computations and shared pools, each with its worker processes."""
        groups: dict[tuple[str, str], list[ProcessRecord]] = {}
        for record in self._state.stored_processes():
            if record.request.definition_id == COMPUTE_WORKER:
                groups.setdefault(_computation_of(record), []).append(record)
        found: list[dict[str, Any]] = []
        for (kind, name), records in groups.items():
            records.sort(key=lambda r: r.upid)
            states = Counter(str(r.state) for r in records)
            found.append(
                {
                    "kind": kind,
                    "name": name,
                    "workers": [process_row(r) for r in records],
                    "by_state": dict(states),
                    "live": sum(1 for r in records if not r.state.is_terminal),
                    "created_at": min(r.created_at for r in records),
                }
            )
        found.sort(key=lambda g: (g["live"] == 0, -g["created_at"]))
        return {"time": self._clock.time(), "computations": found}

    def pipelines(self, limit: int = 50) -> dict[str, Any]:
        """The event queue this dispatcher hosts (if any) and the pipelines' workers."""
        workers: dict[str, list[ProcessRecord]] = {}
        for record in self._state.stored_processes():
            definition = record.request.definition_id
            if definition.startswith(PIPELINE_PREFIX):
                workers.setdefault(definition.removeprefix(PIPELINE_PREFIX), []).append(record)
        return {
            "time": self._clock.time(),
            "queue": self._queue.describe(limit) if self._queue is not None else None,
            "pipelines": [
                {
                    "queue": queue,
                    "workers": [process_row(r) for r in sorted(records, key=lambda r: r.upid)],
                    "live": sum(1 for r in records if not r.state.is_terminal),
                }
                for queue, records in sorted(workers.items())
            ],
        }


def _parse_states(texts: Iterable[str]) -> frozenset[ProcessState]:
    parsed = set()
    for text in texts:
        try:
            parsed.add(ProcessState.parse(text))
        except ValueError:
            raise InvalidRequest(
                f"state {text!r} is not a process state; expected one of "
                + ", ".join(str(s) for s in ProcessState),
                field="state",
            ) from None
    return frozenset(parsed)


def _mentions(record: ProcessRecord, needle: str) -> bool:
    name = record.request.name
    return needle in record.upid.lower() or (name is not None and needle in name.lower())


def _computation_of(record: ProcessRecord) -> tuple[str, str]:
    """``("shared pool", pool)`` or ``("computation", name)``, from what the worker was
    scheduled with (``compute.reservation``)."""
    compute = record.request.configuration.get("compute")
    if isinstance(compute, dict) and compute.get("pool"):
        return "shared pool", str(compute["pool"])
    name = record.request.name or ""
    if name.startswith("compute "):
        return "computation", name.removeprefix("compute ")
    return "computation", record.upid.rpartition("-w")[0] or record.upid
