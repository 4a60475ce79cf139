"""The matchmaker's bookkeeping of free slots: per engine, the nodes that fit each kind of
request, bucketed by load, so that finding the busiest fitting node with a free slot costs
about O(1) instead of a scan of every node.

A *kind* of request is its set of constraints; processes of one kind fit the same nodes.
Its :class:`Group` is built the first time the kind is seen in a match (from an index of
node properties, so a constraint that names one host costs what that host costs, not a
scan), and kept up to date as placements change loads: a node moves up a level when it
takes a process and leaves the levels when it is full.
"""

from __future__ import annotations

from collections.abc import Mapping

from corral.core.constraints import constraint_text, unmet_constraint
from corral.core.model import NO_RESOURCES, ConstraintValue, Resources
from corral.core.snapshot import EngineView, NodeView, Pending

Kind = tuple[tuple[str, object], ...]
PLAIN: Kind = ()


class Slots:
    """One node's accounting while one match is computed."""

    __slots__ = ("exclusive", "free", "groups", "node", "order", "room", "used")

    def __init__(self, node: NodeView, order: int) -> None:
        self.node = node
        self.order = order
        self.used = node.used
        self.free = node.slots - node.used
        self.exclusive = set(node.exclusive_tags)
        self.room = node.room
        self.groups: list[Group] = []

    def fits(self, tag: str | None, needs: Resources) -> bool:
        if tag is not None and tag in self.exclusive:
            return False
        return not needs or self.room is None or needs.fits_in(self.room)


class Group:
    """The nodes of one engine whose properties fit one set of constraints.

    ``levels`` holds those with a free slot, by load (insertion order within a level: node
    order, then arrival). Exclusive tags are checked when a node is picked: few nodes carry
    a given tag, so skipping them costs less than a group per tag would.
    """

    __slots__ = ("levels", "members")

    def __init__(self, members: list[Slots]) -> None:
        self.members = members
        self.levels: dict[int, dict[int, Slots]] = {}
        for slots in members:
            slots.groups.append(self)
            if slots.free > 0:
                self.levels.setdefault(slots.used, {})[slots.order] = slots

    def busiest(self, tag: str | None, needs: Resources = NO_RESOURCES) -> Slots | None:
        """The busiest member with a free slot, without ``tag``, with room for ``needs``."""
        if not self.levels:
            return None
        if tag is None and not needs:
            return next(iter(self.levels[max(self.levels)].values()))
        # Few nodes carry a given tag or lack the room: skipping them beats a group each.
        for used in sorted(self.levels, reverse=True):
            for slots in self.levels[used].values():
                if slots.fits(tag, needs):
                    return slots
        return None

    def blocked(self, tag: str) -> int:
        """Members that already hold ``tag``."""
        return sum(1 for slots in self.members if tag in slots.exclusive)

    def moved(self, slots: Slots, used: int) -> None:
        """``slots`` went from load ``used`` to its current one."""
        level = self.levels.get(used)
        if level is not None and level.pop(slots.order, None) is not None and not level:
            del self.levels[used]
        if slots.free > 0:
            self.levels.setdefault(slots.used, {})[slots.order] = slots


class Engine:
    """One engine's nodes during a match, and the groups built so far."""

    __slots__ = ("_groups", "_index", "free", "nodes", "view")

    def __init__(self, view: EngineView, nodes: list[NodeView], first: int) -> None:
        self.view = view
        self.nodes = [Slots(node, first + i) for i, node in enumerate(nodes)]
        self.free = sum(max(s.free, 0) for s in self.nodes)
        self._groups: dict[Kind, Group] = {}
        self._index: dict[str, dict[str, list[Slots]]] | None = None

    def group(self, pending: Pending) -> Group:
        kind = kind_of(pending)
        group = self._groups.get(kind)
        if group is None:
            constraints = pending.constraints
            group = self._groups[kind] = Group(
                [
                    slots
                    for slots in self._candidates(constraints)
                    if unmet_constraint(constraints, slots.node.properties) is None
                ]
            )
        return group

    def place(self, slots: Slots, tag: str | None, needs: Resources = NO_RESOURCES) -> None:
        """Book one slot of ``slots`` (and ``needs`` of its room) for a process with ``tag``."""
        used = slots.used
        slots.used += 1
        slots.free -= 1
        self.free -= 1
        if needs and slots.room is not None:
            slots.room = slots.room - needs
        for group in slots.groups:
            group.moved(slots, used)
        if tag is not None:
            slots.exclusive.add(tag)

    def _candidates(self, constraints: Mapping[str, ConstraintValue]) -> list[Slots]:
        """Nodes that may fit ``constraints``: those having the rarest wanted value."""
        if not constraints:
            return self.nodes
        if self._index is None:
            self._index = {}
            for slots in self.nodes:
                for key, value in slots.node.properties.items():
                    self._index.setdefault(key, {}).setdefault(value, []).append(slots)
        best: list[Slots] | None = None
        for key, wanted in constraints.items():
            values = self._index.get(key, {})
            allowed = constraint_text(wanted)
            found: list[Slots] = []
            for value in allowed if isinstance(allowed, list) else [allowed]:
                found += values.get(value, [])
            if best is None or len(found) < len(best):
                best = found
        return sorted(best or [], key=lambda s: s.order)


def kind_of(pending: Pending) -> Kind:
    if not pending.constraints:
        return PLAIN
    return tuple(
        sorted(
            (key, tuple(value) if isinstance(value, list) else value)
            for key, value in pending.constraints.items()
        )
    )
