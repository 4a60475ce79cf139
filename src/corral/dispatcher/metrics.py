"""Prometheus metrics of one dispatcher (``GET /metrics``), in its own registry.

Levels (processes by state, queue length and longest wait, nodes by state) are read from
the live tables at scrape time, so they cannot drift; what happens over time (time from
queue to running, boots and their outcomes, driver calls and errors) is counted as it
happens: process changes through the state listener, the rest through the hooks the
node side calls. The dashboard reads the same figures (``longest_wait``, ``launches``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client import Counter as CounterMetric
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from corral.core.ids import Upid
from corral.core.process_states import MATCHABLE_STATES, ProcessState
from corral.dispatcher.state import Change_, State

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600)
_BOOT_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)
#: minutes of launch counts kept for the dashboard's chart
LAUNCH_MINUTES = 60


class Metrics:
    def __init__(
        self, state: State, nodes: Callable[[], list[dict[str, Any]]], clock: Callable[[], float]
    ) -> None:
        self._state = state
        self._clock = clock
        # not auto-described: the levels are read only when scraped, once all is wired
        self.registry = CollectorRegistry(auto_describe=False)
        #: when each queued process entered the queue, by the dispatcher's wall clock
        self._queued_since: dict[Upid, float] = {}
        #: processes that went RUNNING, by minute of the wall clock (minute = time // 60)
        self._launches: dict[int, int] = {}
        self.registry.register(_Levels(state, nodes, self.longest_wait))
        self.queue_to_running = Histogram(
            "corral_queue_to_running_seconds",
            "Time from entering the queue to RUNNING, per round.",
            buckets=_WAIT_BUCKETS,
            registry=self.registry,
        )
        self.boots = CounterMetric(
            "corral_boots",
            "Node boots by engine and outcome (joined, failed, timed_out).",
            ["engine", "outcome"],
            registry=self.registry,
        )
        self.boot_time = Histogram(
            "corral_boot_seconds",
            "Time from asking the driver for a node to its agent joining.",
            ["engine"],
            buckets=_BOOT_BUCKETS,
            registry=self.registry,
        )
        self.driver_calls = CounterMetric(
            "corral_driver_calls",
            "Driver calls by engine, operation and outcome (ok, error).",
            ["engine", "operation", "outcome"],
            registry=self.registry,
        )
        self.forgotten = CounterMetric(
            "corral_processes_forgotten",
            "Ended processes forgotten, record and history, past the retention.",
            registry=self.registry,
        )
        for record in state.processes.values():
            if record.state in MATCHABLE_STATES:
                self._queued_since[record.upid] = record.updated_at

    def on_commit(self, changes: list[Change_]) -> None:
        """The state listener: note entries into the queue and starts."""
        for change in changes:
            record = change.record
            if record.state in MATCHABLE_STATES:
                self._queued_since.setdefault(record.upid, record.updated_at)
            elif record.state is ProcessState.RUNNING:
                self._launched(record.started_at or record.updated_at)
                since = self._queued_since.pop(record.upid, None)
                if since is not None:
                    started = record.started_at or record.updated_at
                    self.queue_to_running.observe(max(0.0, started - since))
            elif not record.state.holds_slot:
                self._queued_since.pop(record.upid, None)  # ended before it ran

    def _launched(self, when: float) -> None:
        minute = int(when // 60)
        self._launches[minute] = self._launches.get(minute, 0) + 1
        if len(self._launches) > LAUNCH_MINUTES:
            for old in sorted(self._launches)[:-LAUNCH_MINUTES]:
                del self._launches[old]

    def launches(self, now: float, minutes: int = 30) -> list[tuple[float, int]]:
        """``(start of the minute, processes that went RUNNING in it)``, the oldest first,
        ending with the current minute."""
        last = int(now // 60)
        return [(m * 60.0, self._launches.get(m, 0)) for m in range(last - minutes + 1, last + 1)]

    def longest_wait(self) -> float:
        """How long the process that has waited longest in the queue has waited (0: none)."""
        oldest = min(self._queued_since.values(), default=None)
        return 0.0 if oldest is None else max(0.0, self._clock() - oldest)

    def driver_call(self, engine: str, operation: str, ok: bool) -> None:
        self.driver_calls.labels(engine, operation, "ok" if ok else "error").inc()

    def boot_ended(self, engine: str, outcome: str, seconds: float | None = None) -> None:
        self.boots.labels(engine, outcome).inc()
        if seconds is not None:
            self.boot_time.labels(engine).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Levels(Collector):
    """Gauges read from the live tables at each scrape."""

    def __init__(
        self,
        state: State,
        nodes: Callable[[], list[dict[str, Any]]],
        longest_wait: Callable[[], float],
    ) -> None:
        self._state = state
        self._nodes = nodes
        self._longest_wait = longest_wait

    def collect(self) -> Iterator[GaugeMetricFamily]:
        by_state = self._state.stored_counts()
        processes = GaugeMetricFamily("corral_processes", "Processes by state.", labels=["state"])
        for state in ProcessState:
            processes.add_metric([str(state)], by_state.get(state, 0))
        yield processes
        yield GaugeMetricFamily(
            "corral_queue_length", "Processes waiting for a slot.", value=len(self._state.queue)
        )
        yield GaugeMetricFamily(
            "corral_queue_longest_wait_seconds",
            "How long the process that has waited longest has waited.",
            value=self._longest_wait(),
        )
        nodes = GaugeMetricFamily(
            "corral_nodes",
            "Nodes by engine, instance type, state and health.",
            labels=["engine", "instance_type", "state", "health"],
        )
        slots = GaugeMetricFamily(
            "corral_slots", "Process slots by engine, in use or not.", labels=["engine", "used"]
        )
        counts: Counter[tuple[str, str, str, str]] = Counter()
        used: Counter[tuple[str, str]] = Counter()
        price = 0.0
        for node in self._nodes():
            kind = node.get("instance_type") or ""
            counts[(node["engine"], kind, node["state"], node["health"])] += 1
            price += node.get("price") or 0.0
            used[(node["engine"], "true")] += node["used"]
            used[(node["engine"], "false")] += max(0, node["slots"] - node["used"])
        for (engine, kind, node_state, health), count in counts.items():
            nodes.add_metric([engine, kind, node_state, health], count)
        for (engine, in_use), count in used.items():
            slots.add_metric([engine, in_use], count)
        yield nodes
        yield slots
        yield GaugeMetricFamily(
            "corral_pool_price", "What the pool's nodes cost per hour, together.", value=price
        )
