"""Typed identifiers, so a node id is never passed where a process id is expected."""

from typing import NewType

Upid = NewType("Upid", str)
DefinitionId = NewType("DefinitionId", str)
NodeId = NewType("NodeId", str)
EngineId = NewType("EngineId", str)
Round = NewType("Round", int)
