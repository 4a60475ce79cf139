"""Which ended processes the dispatcher may forget, and when.

A process that ended (TERMINATED, EXITED, FAILED, REJECTED) and stays so is kept for
``max_age`` seconds after its end, and at most ``max_count`` ended processes are kept: past
either bound the oldest ends go first, as Slurm's ``MinJobAge`` and ``MaxJobCount`` or
Nomad's job garbage collection do. Without a bound a dispatcher that runs batch jobs for
months would hold every one of them in memory and in its store. Scheduling a forgotten
upid again starts it anew, in round 1.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from corral.core.ids import Upid

#: a day: long enough to look at yesterday's failures
DEFAULT_MAX_AGE = 86_400.0
#: a dispatcher holding 100,000 processes takes about 180 MiB of memory
DEFAULT_MAX_COUNT = 100_000


@dataclass(frozen=True, slots=True)
class Retention:
    """How long ended processes are kept: ``max_age`` seconds after they ended, and at most
    ``max_count`` of them. 0 for either: no such bound."""

    max_age: float = DEFAULT_MAX_AGE
    max_count: int = DEFAULT_MAX_COUNT

    @property
    def bounded(self) -> bool:
        return self.max_age > 0 or self.max_count > 0

    def describe(self) -> str:
        """The bounds in a few words, for a message: "kept 86400 s, 100000 at most"."""
        if not self.bounded:
            return "ended processes are kept"
        bounds = [f"{self.max_age:g} s after their end"] if self.max_age > 0 else []
        bounds += [f"{self.max_count} at most"] if self.max_count > 0 else []
        return "ended processes are kept " + ", ".join(bounds)

    def not_found(self, upid: str) -> str:
        """What to say of a upid the dispatcher does not know."""
        if not self.bounded:
            return f"no process {upid!r}"
        return f"no process {upid!r} (it may have ended and been forgotten: {self.describe()})"


def expired(
    ended: Iterable[tuple[Upid, float]],
    count: int,
    now: float,
    retention: Retention,
    limit: int,
) -> list[Upid]:
    """The ended processes to forget now, at most ``limit`` of them.

    ``ended`` gives each ended process with its end time, oldest end first, ``count`` of
    them in all. What goes is always the oldest: a prefix of ``ended``.
    """
    over = count - retention.max_count if retention.max_count > 0 else 0
    cutoff = now - retention.max_age if retention.max_age > 0 else None
    gone: list[Upid] = []
    for upid, ended_at in ended:
        if len(gone) >= limit:
            break
        if len(gone) < over or (cutoff is not None and ended_at <= cutoff):
            gone.append(upid)
        else:
            break
    return gone
