"""How many nodes each engine should boot: a pure function of what the pool holds.

This first planner keeps ``base_need`` nodes per engine (never above ``maximum_vms``);
growing with demand is a later step that changes only this module.
"""

from __future__ import annotations

from collections.abc import Mapping

from corral.core.ids import EngineId
from corral.core.model import Engine


def nodes_to_boot(engines: tuple[Engine, ...], live: Mapping[EngineId, int]) -> dict[EngineId, int]:
    """Nodes to create per engine, given how many are booting or up (``live``)."""
    boots: dict[EngineId, int] = {}
    for engine in engines:
        want = min(engine.base_need, engine.maximum_vms)
        missing = want - live.get(engine.engine_id, 0)
        if missing > 0:
            boots[engine.engine_id] = missing
    return boots
