"""How many workers a pipeline wants for its queue's depth (pure, no I/O).

Up at once, to ``ceil(depth / per_worker)`` within ``[minimum, maximum]``; down only once the
depth has asked for fewer for ``cooldown`` seconds, so that a queue that drains and refills
does not make workers come and go (a worker stopped mid-event gives its event back, but its
work is lost).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class AutoScaler:
    minimum: int
    maximum: int
    per_worker: int
    cooldown: float
    _fewer_since: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not 0 <= self.minimum <= self.maximum:
            raise ValueError(f"need 0 <= minimum <= maximum, got {self.minimum}, {self.maximum}")
        if self.per_worker < 1:
            raise ValueError(f"per_worker must be at least 1, not {self.per_worker}")

    def wanted(self, depth: int, current: int, now: float) -> int:
        """The workers to have now, given the events pending or in progress."""
        target = min(self.maximum, max(self.minimum, math.ceil(depth / self.per_worker)))
        if target >= current:
            self._fewer_since = None
            return target
        if self._fewer_since is None:
            self._fewer_since = now
        if now - self._fewer_since >= self.cooldown:
            self._fewer_since = None
            return target
        return current
