"""The free-space guard refuses new work below the reserve, and only then."""

from __future__ import annotations

import pytest

from corral.dispatcher.space import SpaceGuard
from corral.errors import StoreFull, Unavailable

MIB = 1 << 20


class Disk:
    def __init__(self, free: int | None) -> None:
        self.free = free

    def free_space(self) -> int | None:
        return self.free


def test_below_the_reserve_new_work_is_refused_with_the_figures():
    guard = SpaceGuard(Disk(3 * MIB), reserve_mb=8)
    with pytest.raises(StoreFull) as caught:
        guard.check()
    assert "3.0 MiB free" in caught.value.message
    assert "8 MiB" in caught.value.message
    assert isinstance(caught.value, Unavailable)  # a client retries it later


@pytest.mark.parametrize("free", [8 * MIB, 100 * MIB, None])
def test_at_or_above_the_reserve_or_on_a_server_nothing_is_refused(free: int | None):
    SpaceGuard(Disk(free), reserve_mb=8).check()


def test_a_zero_reserve_refuses_nothing_even_on_a_full_disk():
    SpaceGuard(Disk(0), reserve_mb=0).check()
