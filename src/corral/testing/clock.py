"""A clock that moves only when the test says so.

:class:`ManualClock` satisfies :class:`corral.clock.Clock`, so any loop that takes a clock
can be driven through heartbeat deadlines, backoff delays and boot timeouts without a
single ``sleep``::

    clock = ManualClock()
    clock.advance(6.0)        # six seconds pass, instantly
"""

from __future__ import annotations

import math

#: wall-clock reading a fresh ManualClock starts at (2023-11-14T22:13:20Z), far from 0
#: so code that mistakes a monotonic reading for a wall-clock one shows up in a test
DEFAULT_WALL_START = 1_700_000_000.0


class ManualClock:
    """A :class:`corral.clock.Clock` whose time advances only through :meth:`advance`.

    ``start`` is the first monotonic reading and ``wall_start`` the first wall-clock one;
    both move together. :meth:`set_time` steps the wall clock alone, as NTP or an operator
    may, while monotonic time (what timeouts are measured with) stays put.
    """

    __slots__ = ("_monotonic", "_wall")

    def __init__(self, start: float = 0.0, wall_start: float = DEFAULT_WALL_START) -> None:
        _check_finite("start", start)
        _check_finite("wall_start", wall_start)
        self._monotonic = float(start)
        self._wall = float(wall_start)

    def monotonic(self) -> float:
        return self._monotonic

    def time(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass on both clocks; monotonic time never goes back."""
        _check_finite("seconds", seconds)
        if seconds < 0:
            raise ValueError(f"a clock cannot go back in time (advance({seconds!r}))")
        self._monotonic += seconds
        self._wall += seconds

    def set_time(self, wall: float) -> None:
        """Step the wall clock to ``wall`` (either way); monotonic time does not move."""
        _check_finite("wall", wall)
        self._wall = float(wall)

    def __repr__(self) -> str:
        return f"ManualClock(monotonic={self._monotonic!r}, time={self._wall!r})"


def _check_finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {value!r}")
