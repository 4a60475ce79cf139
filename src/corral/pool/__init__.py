"""Nodes: booting and retiring them through drivers, tagged so they can be found again.

Owns the instance side of a node (create, list by tag, destroy) and driver errors. Imports
``core`` and ``drivers``; what nodes are needed is decided in ``core.planner``.
"""

from corral.pool.pool import NodePool

__all__ = ["NodePool"]
