"""The free-space guard: new work is refused while the store's disk is nearly full.

A store that cannot commit stops the dispatcher (fail-stop: memory would be ahead of the
truth). So the dispatcher keeps a reserve on the store's disk for the work it already has
(every state change of a known process is a write) and refuses what would add to it,
saying why, until an operator frees space. A backend whose disk is not ours to see (a
database server) is never refused here.
"""

from __future__ import annotations

from typing import Protocol

from corral.errors import StoreFull

_MIB = 1 << 20


class FreeSpace(Protocol):
    """The store, as far as the guard cares."""

    def free_space(self) -> int | None: ...


class SpaceGuard:
    """Raises `StoreFull` from `check` while less than ``reserve_mb`` MiB are free."""

    def __init__(self, store: FreeSpace, reserve_mb: int) -> None:
        self._store = store
        self._reserve = reserve_mb * _MIB

    def check(self) -> None:
        free = self._store.free_space()
        if free is not None and free < self._reserve:
            raise StoreFull(
                f"the store's disk has {free / _MIB:.1f} MiB free, less than the"
                f" {self._reserve // _MIB} MiB kept for the work already accepted"
                " (store_reserve_mb): new work is refused until space is freed"
            )
