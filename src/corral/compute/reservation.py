"""A computation's worker processes as the dispatcher sees them: the definition they run, the
requests that start them, where they landed, and their release at the end."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Final

from corral.client import AsyncClient
from corral.compute.errors import ComputeError
from corral.compute.placement import worker_slots

log = logging.getLogger("corral.compute")

WORKER_DEFINITION: Final = "corral-compute-worker"


class Reservation:
    """The worker processes one computation asked the dispatcher for."""

    def __init__(self, dispatcher: AsyncClient, computation: str, python: str) -> None:
        self.dispatcher = dispatcher
        self.computation = computation
        self.python = python
        self.upids: list[str] = []

    async def request(
        self,
        workers: int | None,
        engine: str | None,
        constraints: Mapping[str, Any],
        configuration: Mapping[str, Any],
    ) -> list[str]:
        """Schedule worker processes (see ``placement.worker_slots``); their upids."""
        await self._ensure_definition()
        nodes = await self.dispatcher.list_nodes() if workers is None else []
        requests: list[dict[str, Any]] = []
        for pinned in worker_slots(nodes, workers, engine, constraints):
            request: dict[str, Any] = {
                "upid": f"{self.computation}-w{len(self.upids) + len(requests)}",
                "definition_id": WORKER_DEFINITION,
                "configuration": dict(configuration),
                "restart_mode": "ABNORMAL",
                "constraints": {**constraints, **pinned},
                "name": f"compute {self.computation}",
            }
            if engine is not None:
                request["execution_engine_id"] = engine
            requests.append(request)
        if not requests:
            where = f"of engine {engine}" if engine else "at all"
            raise ComputeError(f"no live node {where} matches the constraints {dict(constraints)}")
        await self.dispatcher.schedule_processes(requests)
        upids = [r["upid"] for r in requests]
        self.upids += upids
        return upids

    async def _ensure_definition(self) -> None:
        executable = {"exec": self.python, "argv": ["-m", "corral.compute"]}
        definitions = {d["definition_id"]: d for d in await self.dispatcher.list_definitions()}
        found = definitions.get(WORKER_DEFINITION)
        if found is None:
            await self.dispatcher.create_definition(WORKER_DEFINITION, "exec", executable)
        elif {k: found["executable"].get(k) for k in executable} != executable:
            await self.dispatcher.update_definition(WORKER_DEFINITION, "exec", executable)

    async def why_waiting(self, upid: str) -> str:
        record = await self.dispatcher.describe_process(upid)
        return str(record.get("waiting_reason") or record.get("state"))

    async def node_of(self, upid: str) -> str:
        """The node a worker process runs on, as the dispatcher names it."""
        try:
            record = await self.dispatcher.describe_process(upid)
        except Exception as exc:  # the dispatcher is only asked for a name here
            log.warning("cannot ask the dispatcher where %s runs: %s", upid, exc)
            return "unknown"
        return str(record.get("assigned") or record.get("hostname") or "unknown")

    async def release(self, timeout: float) -> None:  # noqa: ASYNC109 - per process
        """Terminate the worker processes (they are exiting by themselves) and wait for them."""

        async def end(upid: str) -> None:
            await self.dispatcher.terminate_process(upid)
            await self.dispatcher.wait_process(upid, timeout=timeout)

        await asyncio.gather(*(end(upid) for upid in self.upids), return_exceptions=True)
