"""The clock the loops read: monotonic time for timeouts, wall time for records.

Loops take a Clock instead of calling ``time`` so tests can drive time by hand
(``corral.testing.ManualClock``).
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()
