"""Drivers boot and retire nodes: a small contract and one module per backend.

A driver creates an instance with tags, lists instances, and destroys one; nothing more.
Retries and rate limits wrap a driver from outside. Drivers import ``core`` only (the
local driver also the agent's orphan reaper, since its nodes are local processes).
"""

from corral.drivers.base import Driver, Instance, NodeSpec

__all__ = ["Driver", "Instance", "NodeSpec"]
