"""Which ended processes go: always the oldest, never more than the bounds ask, and every
one the bounds rule out."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from corral.core.ids import Upid
from corral.core.retention import Retention, expired

NOW = 10_000.0


def ended(times: list[float]) -> list[tuple[Upid, float]]:
    return [(Upid(f"p{i}"), t) for i, t in enumerate(sorted(times))]


@given(
    times=st.lists(st.floats(0, NOW), max_size=60),
    max_age=st.sampled_from([0.0, 1.0, 500.0, 5_000.0]),
    max_count=st.integers(0, 70),
    limit=st.integers(1, 80),
)
def test_the_oldest_go_first_and_exactly_as_far_as_the_bounds_say(
    times: list[float], max_age: float, max_count: int, limit: int
) -> None:
    listed = ended(times)
    retention = Retention(max_age, max_count)
    gone = expired(listed, len(listed), NOW, retention, limit)
    assert gone == [upid for upid, _ in listed[: len(gone)]]  # a prefix: the oldest
    assert len(gone) <= limit
    kept = listed[len(gone) :]
    if len(gone) < limit:  # not cut short by the batch: what stays is within the bounds
        if max_count:
            assert len(kept) <= max_count
        if max_age:
            assert all(t > NOW - max_age for _, t in kept)
    # and nothing went that both bounds allowed to stay
    for upid, t in listed[: len(gone)]:
        index = next(i for i, (u, _) in enumerate(listed) if u == upid)
        too_many = max_count > 0 and len(listed) - index > max_count
        too_old = max_age > 0 and t <= NOW - max_age
        assert too_many or too_old


def test_without_bounds_nothing_goes() -> None:
    listed = ended([1.0, 2.0, 3.0])
    assert not Retention(0, 0).bounded
    assert expired(listed, 3, NOW, Retention(0, 0), 100) == []


def test_a_batch_takes_at_most_its_limit() -> None:
    listed = ended([float(t) for t in range(10)])
    assert expired(listed, 10, NOW, Retention(1.0, 0), 4) == ["p0", "p1", "p2", "p3"]
    assert expired(listed, 10, NOW, Retention(0, 7), 100) == ["p0", "p1", "p2"]


def test_the_bounds_read_as_a_sentence() -> None:
    assert (
        Retention().describe() == "ended processes are kept 86400 s after their end, 100000 at most"
    )
    assert Retention(0, 5).describe() == "ended processes are kept 5 at most"
    assert Retention(0, 0).describe() == "ended processes are kept"
    assert Retention(0, 0).not_found("x") == "no process 'x'"
    assert Retention(0, 5).not_found("x") == (
        "no process 'x' (it may have ended and been forgotten: ended processes are kept 5 at most)"
    )
