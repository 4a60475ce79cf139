"""Nodes whose heartbeats are missing: disconnected first, lost once nothing waits for them.

At each tick the node loop hands over every node it has not heard from for
``heartbeat_missing`` seconds. Each process on it gets the verdict of its disconnect policy
(``core.disconnect``): kept within its grace (its record notes ``disconnected_since``),
or lost (its restart mode applies, held back by a fence when it is at-most-once). While
some process is kept the node is DISCONNECTED, takes no work and is not destroyed; once
none is, it is lost as any silent node is.

A disconnected node heard from again is asked to join again (its session is closed): the
inventory of its Hello then settles each process, and a round replaced meanwhile is killed
there, as the newest round always wins.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Protocol

from corral.clock import Clock
from corral.core.disconnect import DisconnectPolicy, Fence, Verdict, describe, fence, verdict
from corral.core.ids import EngineId, NodeId
from corral.core.model import Engine, NodeRecord, ProcessRecord
from corral.core.node_states import NodeState
from corral.dispatcher.state import State
from corral.dispatcher.syncer import Syncer

log = logging.getLogger("corral.nodes")


class Closable(Protocol):
    """A node's agent session, as far as this module needs it."""

    def close(self) -> None: ...


class Partitions:
    """Applies disconnect policies to the processes of silent nodes, and undoes the
    disconnection when a node returns."""

    def __init__(
        self,
        state: State,
        engines: Mapping[EngineId, Engine],
        clock: Clock,
        syncer: Syncer,
        lose_node: Callable[[NodeId, str], None],
    ) -> None:
        self._state = state
        self._engines = engines
        self._clock = clock
        self._syncer = syncer
        self._lose_node = lose_node

    def check(self, node: NodeRecord, silent_for: float, session: Closable | None) -> None:
        """At each tick, for a node that is not booting: one silent for
        ``heartbeat_missing`` is disconnected or lost; a disconnected one heard again on its
        old connection is asked to join again (``session`` closed), so that its inventory
        settles what changed while it was away."""
        engine = self._engines[node.engine]
        if silent_for >= engine.heartbeat_missing:
            self.missing(node, silent_for)
        elif node.state is NodeState.DISCONNECTED and session is not None:
            log.info("node %s is heard again; asking its agent to join again", node.node_id)
            session.close()

    def missing(self, node: NodeRecord, silent_for: float) -> None:
        """``node`` has not been heard from for ``silent_for`` seconds (at least
        ``heartbeat_missing``): keep, replace or lose each of its processes."""
        engine = self._engines[node.engine]
        now = self._clock.time()
        # when the node became disconnected, by the dispatcher's own clock
        since = now - (silent_for - engine.heartbeat_missing)
        missing = engine.heartbeat_missing
        silence = f"no heartbeat for {silent_for:.1f} s (heartbeat_missing {missing:g} s)"
        if node.state is NodeState.SHUTTING_DOWN:
            self._lose_node(node.node_id, silence)  # being retired: nothing to wait for
            return
        kept: list[ProcessRecord] = []
        ended: dict[tuple[str, float], list[ProcessRecord]] = {}
        for record in self._held(node.node_id):
            policy = DisconnectPolicy.of(record.request)
            began = record.disconnected_since if record.disconnected_since is not None else since
            outcome = verdict(policy, now - began)
            if outcome is Verdict.KEEP:
                kept.append(record)
                continue
            if outcome is Verdict.LOSE and policy.grace == 0:
                reason = f"node {node.node_id} lost: {silence}"  # no grace: a plain loss
            else:
                reason = describe(outcome, policy, node.node_id)
            ended.setdefault((reason, began), []).append(record)
        for (reason, began), records in ended.items():
            self._syncer.lose(records, reason, self._fence(engine, began))
        if not kept:
            self._lose_node(node.node_id, silence)
            return
        if node.state is not NodeState.DISCONNECTED:
            log.warning(
                "node %s disconnected: no heartbeat for %.1f s; %d process(es) wait out "
                "their grace",
                node.node_id,
                silent_for,
                len(kept),
            )
            self._state.save_node(replace(node, state=NodeState.DISCONNECTED))
        marked = [
            replace(r, disconnected_since=since, updated_at=now)
            for r in kept
            if r.disconnected_since is None
        ]
        if marked:
            self._state.save_processes(marked)

    def returned(self, node_id: NodeId) -> None:
        """The node's agent joined again: its processes are no longer disconnected."""
        now = self._clock.time()
        back = [
            replace(r, disconnected_since=None, updated_at=now)
            for r in self._held(node_id)
            if r.disconnected_since is not None
        ]
        if back:
            log.info("node %s is back: %d process(es) were waiting for it", node_id, len(back))
            self._state.save_processes(back)

    def fence_of(self, node: NodeRecord, records: Iterable[ProcessRecord]) -> Fence | None:
        """The fence of processes taken from ``node`` now (by an operator's kill, say):
        None when the node is connected, so what it runs is known to stop."""
        engine = self._engines.get(node.engine)
        if node.state is not NodeState.DISCONNECTED or engine is None:
            return None
        times = [r.disconnected_since for r in records if r.disconnected_since is not None]
        return self._fence(engine, min(times, default=self._clock.time()))

    def _held(self, node_id: NodeId) -> Iterable[ProcessRecord]:
        processes = self._state.processes
        return [processes[u] for u in self._state.by_node.get(node_id, ())]

    @staticmethod
    def _fence(engine: Engine, disconnected_since: float) -> Fence:
        return fence(
            disconnected_since,
            engine.heartbeat_period,
            engine.stop_after_disconnect,
            engine.terminate_grace,
        )
