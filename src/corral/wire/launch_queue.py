"""The launches an agent holds while every one of its slots is busy.

A dispatcher may send a node more launches than it has slots (an engine's
``launch_ahead``), so that the next process starts the moment a slot frees, without a
round trip to the dispatcher. Every agent, real or simulated, keeps those launches here:
it never runs more than ``slots`` processes at once, and starts what waits in the order it
was received. Nothing here is written to disk: an agent that restarts has lost its queue,
its Hello no longer lists those rounds, and the dispatcher sends their launches again.
"""

from __future__ import annotations

import time
from typing import Literal

from corral.wire.messages import NOT_STARTED, QUEUED, Launch, ProcessReport

Key = tuple[str, int]
"""A process round: ``(upid, round)``."""


class LaunchQueue:
    """Launches received while ``slots`` processes ran, oldest first."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._waiting: dict[Key, Launch] = {}  # dicts keep the order of arrival

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, key: Key) -> bool:
        return key in self._waiting

    def add(self, launch: Launch) -> None:
        """Queue ``launch``; ``next_due`` hands it out when its turn and a slot come."""
        self._waiting.setdefault((launch.upid, launch.round), launch)

    def next_due(self, running: int) -> Launch | None:
        """The oldest queued launch if fewer than ``slots`` processes run, else None."""
        if running >= self.slots or not self._waiting:
            return None
        key = next(iter(self._waiting))
        return self._waiting.pop(key)

    def drop(self, key: Key) -> ProcessReport | None:
        """Take ``key`` out of the queue; its ``not_started`` report, or None if not queued."""
        if self._waiting.pop(key, None) is None:
            return None
        return round_report(key, NOT_STARTED, ended_at=time.time())

    def drop_all(self) -> list[ProcessReport]:
        """Empty the queue (the node shuts down); the ``not_started`` report of each."""
        return [report for key in list(self._waiting) if (report := self.drop(key)) is not None]

    def reports(self) -> list[ProcessReport]:
        """A ``queued`` report for every launch waiting, for the inventory of a Hello."""
        return [round_report(key, QUEUED) for key in self._waiting]


def round_report(
    key: Key, status: Literal["queued", "not_started"], ended_at: float | None = None
) -> ProcessReport:
    """The report of a round that has no process: queued, or dropped before it started."""
    return ProcessReport(key[0], key[1], status, None, None, None, None, None, ended_at)
