"""Where tasks and worker processes go: pure functions of what the computation knows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from corral.core.constraints import unmet_constraint

#: node states in which a node takes new processes
_LIVE_NODE_STATES = ("idle", "busy")


class Loaded(Protocol):
    @property
    def node(self) -> str: ...

    @property
    def load(self) -> int: ...


P = TypeVar("P", bound=Loaded)


def least_loaded(processes: Sequence[P], node: str | None) -> P | None:
    """The process with the fewest pending tasks, on ``node`` if given, else on the node
    whose processes have the fewest pending tasks on average. None if there is none."""
    if node is not None:
        return min((p for p in processes if p.node == node), key=_load, default=None)
    if len(processes) <= 1:
        return processes[0] if processes else None
    totals: dict[str, list[int]] = {}
    for process in processes:
        total = totals.setdefault(process.node, [0, 0])
        total[0] += process.load
        total[1] += 1
    return min(processes, key=lambda p: (totals[p.node][0] / totals[p.node][1], p.load))


def _load(process: Loaded) -> int:
    return process.load


def worker_slots(
    nodes: Iterable[Mapping[str, Any]],
    workers: int | None,
    engine: str | None,
    constraints: Mapping[str, Any],
) -> list[dict[str, str]]:
    """The extra constraints of each worker process to start.

    ``workers`` given: that many, placed by the dispatcher. Otherwise one per slot of every
    live node of ``engine`` (any if None) that meets ``constraints``, each pinned to its node.
    """
    if workers is not None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        return [{} for _ in range(workers)]
    pinned: list[dict[str, str]] = []
    for node in nodes:
        if node.get("state") not in _LIVE_NODE_STATES:
            continue
        if engine is not None and node.get("engine") != engine:
            continue
        if unmet_constraint(constraints, node_properties(node)) is None:
            pinned += [{"node_id": str(node["node_id"])} for _ in range(int(node["slots"]))]
    return pinned


def node_properties(node: Mapping[str, Any]) -> dict[str, str]:
    """A node's properties as constraints see them, from its API record."""
    props = {str(k): str(v) for k, v in (node.get("labels") or {}).items()}
    props["node_id"] = str(node["node_id"])
    props["engine"] = str(node["engine"])
    if node.get("hostname"):
        props["hostname"] = str(node["hostname"])
    return props
