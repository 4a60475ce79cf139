"""Automatic scaling of a pipeline's workers on its queue's depth."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.pipeline.scaling import AutoScaler


def test_up_at_once_and_down_after_the_cooldown() -> None:
    scaler = AutoScaler(minimum=1, maximum=4, per_worker=10, cooldown=30)
    assert scaler.wanted(depth=0, current=0, now=0) == 1
    assert scaler.wanted(depth=25, current=1, now=1) == 3
    assert scaler.wanted(depth=500, current=3, now=2) == 4
    assert scaler.wanted(depth=5, current=4, now=10) == 4  # fewer wanted: wait
    assert scaler.wanted(depth=50, current=4, now=20) == 4  # busy again: the wait restarts
    assert scaler.wanted(depth=5, current=4, now=25) == 4
    assert scaler.wanted(depth=5, current=4, now=55) == 1


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="minimum <= maximum"):
        AutoScaler(minimum=3, maximum=2, per_worker=1, cooldown=0)
    with pytest.raises(ValueError, match="per_worker must be at least 1"):
        AutoScaler(minimum=0, maximum=2, per_worker=0, cooldown=0)


@given(
    st.integers(0, 5),
    st.integers(0, 10),
    st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 12)), max_size=20),
)
def test_always_within_bounds(minimum: int, extra: int, steps: list[tuple[int, int]]) -> None:
    scaler = AutoScaler(minimum, minimum + extra, per_worker=7, cooldown=5)
    current, now = 0, 0.0
    for depth, dt in steps:
        now += dt
        current = scaler.wanted(depth, current, now)
        assert minimum <= current <= minimum + extra
