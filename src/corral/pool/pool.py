"""NodePool: one driver per engine, instances tagged with the pool, engine and node."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from corral.core.ids import EngineId, NodeId
from corral.core.model import Engine
from corral.drivers.base import TAG_ENGINE, TAG_NODE, TAG_POOL, Driver, Instance, NodeSpec

log = logging.getLogger("corral.pool")


class NodePool:
    def __init__(self, pool_id: str, drivers: Mapping[EngineId, Driver]) -> None:
        self.pool_id = pool_id
        self._drivers = dict(drivers)

    async def boot(self, node_id: NodeId, engine: Engine) -> Instance | None:
        """Create the instance for ``node_id``; None (logged) if the driver failed."""
        tags = {TAG_POOL: self.pool_id, TAG_NODE: node_id, TAG_ENGINE: engine.engine_id}
        try:
            return await self._drivers[engine.engine_id].create(NodeSpec(node_id, engine), tags)
        except Exception:
            log.exception("booting node %s of engine %s failed", node_id, engine.engine_id)
            return None

    async def instances(self) -> dict[NodeId, Instance] | None:
        """This pool's instances by node id; None if some driver could not list."""
        found: dict[NodeId, Instance] = {}
        for driver in self._unique_drivers():
            try:
                listed = await driver.list()
            except Exception:
                log.exception("listing instances failed")
                return None
            for instance in listed:
                node_id = instance.node_id
                if instance.tags.get(TAG_POOL) == self.pool_id and node_id is not None:
                    found[node_id] = instance
        return found

    async def destroy(self, engine_id: EngineId, instance_id: str) -> None:
        try:
            await self._drivers[engine_id].destroy(instance_id)
        except Exception:
            log.exception("destroying instance %s failed", instance_id)

    def _unique_drivers(self) -> list[Driver]:
        unique: list[Driver] = []
        for driver in self._drivers.values():
            if not any(d is driver for d in unique):
                unique.append(driver)
        return unique
