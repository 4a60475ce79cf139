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

from collections.abc import Iterable, Mapping

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

    ``members`` are those that had a free slot when the match began (the others can take
    nothing in this match, so they are only counted, in ``full``); ``levels`` holds the
    members that still have one, by load (insertion order within a level: node order, then
    arrival). Exclusive tags are checked when a node is picked: few nodes carry a given
    tag, so skipping them costs less than a group per tag would.
    """

    __slots__ = ("full", "levels", "members")

    def __init__(self, members: list[Slots], full: list[NodeView]) -> None:
        self.members = members
        self.full = full
        self.levels: dict[int, dict[int, Slots]] = {}
        for slots in members:
            slots.groups.append(self)
            if slots.free > 0:
                self.levels.setdefault(slots.used, {})[slots.order] = slots

    @property
    def matching(self) -> int:
        return len(self.members) + len(self.full)

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
        """Matching nodes that already hold ``tag``."""
        return sum(1 for s in self.members if tag in s.exclusive) + sum(
            1 for v in self.full if tag in v.exclusive_tags
        )

    def moved(self, slots: Slots, used: int) -> None:
        """``slots`` went from load ``used`` to its current one."""
        level = self.levels.get(used)
        if level is not None and level.pop(slots.order, None) is not None and not level:
            del self.levels[used]
        if slots.free > 0:
            self.levels.setdefault(slots.used, {})[slots.order] = slots


class Engine:
    """One engine's nodes during a match, and the groups built so far.

    A node's accounting (:class:`Slots`) is made only when a group needs it and the node
    had a free slot: with thousands of full nodes, a match costs what the free ones cost.
    """

    __slots__ = ("_first", "_groups", "_index", "_slots", "free", "view", "views")

    def __init__(self, view: EngineView, nodes: list[NodeView], first: int) -> None:
        self.view = view
        self.views = nodes
        self.free = sum(max(n.slots - n.used, 0) for n in nodes)
        self._first = first
        self._slots: dict[int, Slots] = {}
        self._groups: dict[Kind, Group] = {}
        self._index: dict[str, dict[str, list[int]]] | None = None

    def group(self, pending: Pending) -> Group:
        return self._group(kind_of(pending), pending.constraints)

    def reserve(self, count: int) -> int:
        """Book up to ``count`` free slots, as placements of unconstrained processes would
        be; return how many were booked."""
        group = self._group(PLAIN, {})
        booked = 0
        while booked < count and (chosen := group.busiest(None)) is not None:
            self.place(chosen, None)
            booked += 1
        return booked

    def _group(self, kind: Kind, constraints: Mapping[str, ConstraintValue]) -> Group:
        group = self._groups.get(kind)
        if group is None:
            members: list[Slots] = []
            full: list[NodeView] = []
            for i in self._candidates(constraints):
                node = self.views[i]
                if constraints and unmet_constraint(constraints, node.properties) is not None:
                    continue
                if node.slots > node.used:
                    members.append(self._slot(i))
                else:
                    full.append(node)
            group = self._groups[kind] = Group(members, full)
        return group

    def _slot(self, i: int) -> Slots:
        slots = self._slots.get(i)
        if slots is None:
            slots = self._slots[i] = Slots(self.views[i], self._first + i)
        return slots

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

    def _candidates(self, constraints: Mapping[str, ConstraintValue]) -> Iterable[int]:
        """Nodes (by index) that may fit ``constraints``: those with the rarest wanted value."""
        if not constraints:
            return range(len(self.views))
        if self._index is None:
            self._index = {}
            for i, node in enumerate(self.views):
                for key, value in node.properties.items():
                    self._index.setdefault(key, {}).setdefault(value, []).append(i)
        best: list[int] | None = None
        for key, wanted in constraints.items():
            values = self._index.get(key, {})
            allowed = constraint_text(wanted)
            found: list[int] = []
            for value in allowed if isinstance(allowed, list) else [allowed]:
                found += values.get(value, [])
            if best is None or len(found) < len(best):
                best = found
        return sorted(best or [])


def kind_of(pending: Pending) -> Kind:
    if not pending.constraints:
        return PLAIN
    return tuple(
        sorted(
            (key, tuple(value) if isinstance(value, list) else value)
            for key, value in pending.constraints.items()
        )
    )
