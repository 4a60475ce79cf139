"""NodePool: one driver per engine, instances tagged with the pool, engine and node.

Each driver is wrapped once in ``drivers.wrappers.Guarded``, so rate limits, quota and
capacity errors pause creating instead of being retried on every tick.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from corral.core.ids import EngineId, NodeId
from corral.core.model import Engine, InstanceType
from corral.drivers.base import (
    TAG_ENGINE,
    TAG_IDLE_BEHAVIOR,
    TAG_NODE,
    TAG_POOL,
    CloudError,
    Driver,
    Instance,
    NodeSpec,
)
from corral.drivers.wrappers import Guarded
from corral.wire.messages import ProcessReport

log = logging.getLogger("corral.pool")


class NodePool:
    def __init__(
        self,
        pool_id: str,
        drivers: Mapping[EngineId, Driver],
        on_call: Callable[[str, str, bool], None] | None = None,
    ) -> None:
        self.pool_id = pool_id
        #: told (engine, operation, succeeded) after each driver call, for metrics
        self._on_call = on_call or (lambda engine, operation, ok: None)
        guarded: dict[int, Guarded] = {}
        self._drivers: dict[EngineId, Guarded] = {}
        for engine_id, driver in drivers.items():
            # Engines sharing a driver share its guard: one cloud, one set of limits.
            self._drivers[engine_id] = guarded.setdefault(id(driver), Guarded(driver))

    def quota_reached(self, engine_id: EngineId) -> bool:
        driver = self._drivers.get(engine_id)
        return driver is not None and driver.quota_reached

    def trouble(self, engine_id: EngineId) -> str | None:
        """Why the engine's cloud creates nothing now ("cloud quota reached"...), or None."""
        driver = self._drivers.get(engine_id)
        return driver.trouble() if driver is not None else None

    async def boot(
        self, node_id: NodeId, engine: Engine, kind: InstanceType | None = None
    ) -> Instance | None:
        """Create the instance for ``node_id``; None (logged) if the driver failed."""
        tags = {
            TAG_POOL: self.pool_id,
            TAG_NODE: node_id,
            TAG_ENGINE: engine.engine_id,
            TAG_IDLE_BEHAVIOR: "run",
        }
        try:
            instance = await self._drivers[engine.engine_id].create(NodeSpec(node_id, engine), tags)
        except CloudError as exc:
            log.warning("cannot boot node %s of engine %s: %s", node_id, engine.engine_id, exc)
            self._on_call(engine.engine_id, "create", False)
            return None
        except Exception:
            log.exception("booting node %s of engine %s failed", node_id, engine.engine_id)
            self._on_call(engine.engine_id, "create", False)
            return None
        self._on_call(engine.engine_id, "create", True)
        return instance

    async def instances(self) -> dict[NodeId, Instance] | None:
        """This pool's instances by node id; None if some driver could not list."""
        found: dict[NodeId, Instance] = {}
        for driver in self._unique_drivers():
            try:
                listed = await driver.list()
            except CloudError as exc:
                log.warning("cannot list instances now: %s", exc)
                return None
            except Exception:
                log.exception("listing instances failed")
                return None
            for instance in listed:
                node_id = instance.node_id
                if instance.tags.get(TAG_POOL) == self.pool_id and node_id is not None:
                    found[node_id] = instance
        return found

    async def last_reports(
        self, engine_id: EngineId, instance_id: str
    ) -> Sequence[ProcessReport] | None:
        """What the driver can tell of the rounds a lost instance's agent had not seen
        forgotten (None: it cannot, or failed to)."""
        try:
            return await self._drivers[engine_id].last_reports(instance_id)
        except CloudError as exc:  # an unreachable host, most likely: it was lost, after all
            log.warning("cannot read what instance %s had run: %s", instance_id, exc)
        except Exception:
            log.exception("reading what instance %s had run failed", instance_id)
        return None

    async def destroy(self, engine_id: EngineId, instance_id: str) -> None:
        try:
            await self._drivers[engine_id].destroy(instance_id)
        except CloudError as exc:
            log.warning("cannot destroy instance %s now: %s", instance_id, exc)
        except Exception:
            log.exception("destroying instance %s failed", instance_id)
        else:
            self._on_call(engine_id, "destroy", True)
            return
        self._on_call(engine_id, "destroy", False)

    def _unique_drivers(self) -> list[Guarded]:
        unique: list[Guarded] = []
        for driver in self._drivers.values():
            if not any(d is driver for d in unique):
                unique.append(driver)
        return unique
