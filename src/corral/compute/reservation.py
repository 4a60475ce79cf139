"""A computation's worker processes as the dispatcher sees them: the definition they run, the
requests that start them, where they landed, and their release at the end."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any, Final

from corral.client import AsyncClient
from corral.compute.errors import ComputeError
from corral.compute.placement import worker_slots
from corral.compute.worker import LISTENING
from corral.wire.handshake import new_secret

log = logging.getLogger("corral.compute")

WORKER_DEFINITION: Final = "corral-compute-worker"
_ENDED: Final = ("700-TERMINATED", "800-EXITED", "850-FAILED", "900-REJECTED")


def pool_prefix(pool: str) -> str:
    return f"corral-pool-{pool}-w"


def _refuse_none(
    wanted: list[dict[str, str]], engine: str | None, constraints: Mapping[str, Any]
) -> None:
    if not wanted:
        where = f"of engine {engine}" if engine else "at all"
        raise ComputeError(f"no live node {where} matches the constraints {dict(constraints)}")


class Reservation:
    """The worker processes one computation asked the dispatcher for."""

    def __init__(self, dispatcher: AsyncClient, computation: str, python: str) -> None:
        self.dispatcher = dispatcher
        self.computation = computation
        self.python = python
        self.upids: list[str] = []
        self._ended: set[str] = set()

    async def request(
        self,
        workers: int | None,
        engine: str | None,
        constraints: Mapping[str, Any],
        configuration: Mapping[str, Any],
    ) -> list[str]:
        """Start this computation's own worker processes (see ``placement.worker_slots``)."""
        wanted = await self._slots(workers, engine, constraints)
        _refuse_none(wanted, engine, constraints)
        upids = [f"{self.computation}-w{len(self.upids) + i}" for i in range(len(wanted))]
        name = f"compute {self.computation}"
        await self._start(upids, wanted, engine, constraints, configuration, name)
        self.upids += upids
        return upids

    async def join_pool(
        self,
        pool: str,
        workers: int | None,
        engine: str | None,
        constraints: Mapping[str, Any],
        listen: str,
    ) -> tuple[str, list[str]]:
        """The shared pool's secret and the upids of the workers to use, starting the ones
        the pool lacks (the first user of a pool makes its secret)."""
        prefix = pool_prefix(pool)
        records = [
            r for r in await self.dispatcher.describe_processes() if r["upid"].startswith(prefix)
        ]
        live = [r["upid"] for r in records if r["state"] not in _ENDED]
        secret = (
            next(
                (r["configuration"]["compute"]["secret"] for r in records if r["upid"] in live),
                None,
            )
            or new_secret()
        )
        wanted = await self._slots(workers, engine, constraints)
        if not live:
            _refuse_none(wanted, engine, constraints)
        suffixes = [r["upid"][len(prefix) :] for r in records]
        first = max((int(n) for n in suffixes if n.isdigit()), default=-1) + 1
        missing = wanted[len(live) :]
        new = [f"{prefix}{first + i}" for i in range(len(missing))]
        configuration = {
            "compute": {"pool": pool, "secret": secret, "pulse_interval": 1.0, "listen": listen},
        }
        await self._start(new, missing, engine, constraints, configuration, f"compute pool {pool}")
        upids = (live + new)[: len(wanted) or None]
        self.upids += upids
        return secret, upids

    async def _slots(
        self, workers: int | None, engine: str | None, constraints: Mapping[str, Any]
    ) -> list[dict[str, str]]:
        nodes = await self.dispatcher.list_nodes() if workers is None else []
        return worker_slots(nodes, workers, engine, constraints)

    async def _start(
        self,
        upids: list[str],
        pinned: list[dict[str, str]],
        engine: str | None,
        constraints: Mapping[str, Any],
        configuration: Mapping[str, Any],
        name: str,
    ) -> None:
        if not upids:
            return
        await self._ensure_definition()
        requests = []
        for upid, pin in zip(upids, pinned, strict=True):
            request: dict[str, Any] = {
                "upid": upid,
                "definition_id": WORKER_DEFINITION,
                "configuration": dict(configuration),
                "restart_mode": "ABNORMAL",
                "constraints": {**constraints, **pin},
                "name": name,
            }
            if engine is not None:
                request["execution_engine_id"] = engine
            requests.append(request)
        await self.dispatcher.schedule_processes(requests)

    async def address_of(self, upid: str, deadline: float) -> tuple[str, int]:
        """Where a pool worker listens, from the line it printed (the last, if it restarted)."""
        left = max(0.1, deadline - time.monotonic())
        record = await self.dispatcher.wait_process(upid, ["RUNNING"], timeout=left)
        if record["state"] in _ENDED:
            self._ended.add(upid)
            raise ComputeError(f"pool worker {upid} is {record['state']}")
        while True:
            chunk = await self.dispatcher.read_log(upid, "stdout", 0, 1 << 20)
            if not chunk.get("data") and chunk.get("next_offset", 0) > 0:
                # the log's start was dropped (log_max_bytes): read what it kept
                chunk = await self.dispatcher.read_log(
                    upid, "stdout", chunk["next_offset"], 1 << 20
                )
            lines = [
                ln for ln in str(chunk.get("data", "")).splitlines() if ln.startswith(LISTENING)
            ]
            if lines:
                host, _, port = lines[-1].split()[1].rpartition(":")
                return host, int(port)
            if time.monotonic() > deadline:
                raise ComputeError(f"pool worker {upid} has not said where it listens")
            await asyncio.sleep(0.05)

    def lives(self, upid: str) -> bool:
        """False once the dispatcher said the worker ended for good."""
        return upid not in self._ended

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
