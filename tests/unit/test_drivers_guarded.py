"""Guarded: rate limits, quota and capacity errors pause a driver instead of being retried
on every tick."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from corral.core.ids import NodeId
from corral.drivers.base import (
    CapacityUnavailable,
    CloudError,
    Instance,
    NodeSpec,
    QuotaExceeded,
    RateLimited,
)
from corral.drivers.wrappers import Guarded, Limits
from corral.testing import engine

SPEC = NodeSpec(NodeId("n1"), engine("a"))


class ScriptedDriver:
    """Answers each call with the next scripted error, or succeeds; counts the calls."""

    def __init__(self) -> None:
        self.errors: list[CloudError] = []
        self.calls = 0

    async def create(self, spec: NodeSpec, tags: Mapping[str, str]) -> Instance:
        return self._answer(Instance(f"i{self.calls}", dict(tags)))

    async def list(self) -> list[Instance]:
        return self._answer([])

    async def destroy(self, instance_id: str) -> None:
        self._answer(None)

    def _answer(self, value):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return value


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guarded(**limits: float) -> tuple[Guarded, ScriptedDriver, Clock]:
    driver, clock = ScriptedDriver(), Clock()
    return Guarded(driver, Limits(**limits), clock), driver, clock  # type: ignore[arg-type]


def create(guard: Guarded) -> Instance:
    return asyncio.run(guard.create(SPEC, {}))


def test_a_rate_limit_makes_every_call_fail_fast_until_its_retry_time() -> None:
    guard, driver, clock = guarded()
    driver.errors = [RateLimited("slow down", clock.now + 10)]
    with pytest.raises(RateLimited):
        create(guard)
    assert guard.trouble() == "cloud rate limited"
    with pytest.raises(RateLimited):
        create(guard)
    with pytest.raises(RateLimited):
        asyncio.run(guard.list())
    assert driver.calls == 1  # the cloud was asked once
    clock.now += 10
    assert create(guard).instance_id == "i1"  # the second call that reached it
    assert guard.trouble() is None


def test_calls_beyond_ops_per_second_are_refused_without_reaching_the_cloud() -> None:
    guard, driver, clock = guarded(ops_per_second=3)
    for _ in range(3):
        create(guard)
    with pytest.raises(RateLimited) as refused:
        create(guard)
    assert refused.value.retry_at > clock.now
    assert driver.calls == 3
    clock.now += 1.0
    create(guard)
    assert driver.calls == 4


def test_a_quota_error_stops_creates_until_an_instance_is_destroyed() -> None:
    guard, driver, _ = guarded(quota_retry=60)
    driver.errors = [QuotaExceeded("no more")]
    with pytest.raises(QuotaExceeded):
        create(guard)
    assert guard.trouble() == "cloud quota reached"
    with pytest.raises(QuotaExceeded):
        create(guard)
    assert driver.calls == 1
    asyncio.run(guard.destroy("i0"))
    assert guard.trouble() is None
    create(guard)


def test_a_quota_pause_ends_by_itself_after_quota_retry() -> None:
    guard, driver, clock = guarded(quota_retry=60)
    driver.errors = [QuotaExceeded("no more")]
    with pytest.raises(QuotaExceeded):
        create(guard)
    clock.now += 61
    assert guard.trouble() is None
    create(guard)


def test_capacity_errors_back_off_doubling_and_a_success_resets_them() -> None:
    guard, driver, clock = guarded(capacity_backoff=5, capacity_backoff_cap=15)
    for delay in (5, 10, 15, 15):
        driver.errors = [CapacityUnavailable("none of type a")]
        with pytest.raises(CapacityUnavailable):
            create(guard)
        assert guard.trouble("a") == "no cloud capacity for type a"
        assert guard.trouble("b") is None  # another type may still boot
        clock.now += delay - 0.1
        with pytest.raises(CapacityUnavailable):
            create(guard)
        clock.now += 0.1
    create(guard)
    driver.errors = [CapacityUnavailable("none of type a")]
    with pytest.raises(CapacityUnavailable):
        create(guard)
    clock.now += 5
    create(guard)  # back to the first delay


def test_capacity_missing_everywhere_pauses_every_type() -> None:
    guard, driver, _ = guarded()
    driver.errors = [CapacityUnavailable("sold out", instance_type_only=False)]
    with pytest.raises(CapacityUnavailable):
        create(guard)
    assert guard.trouble("b") == "no cloud capacity"


def test_other_cloud_errors_pass_through_and_pause_nothing() -> None:
    guard, driver, _ = guarded()
    driver.errors = [CloudError("boom")]
    with pytest.raises(CloudError):
        create(guard)
    assert guard.trouble() is None
    create(guard)


def test_quota_reached_says_whether_creates_wait_for_the_quota() -> None:
    guard, driver, clock = guarded(quota_retry=60)
    assert not guard.quota_reached
    driver.errors = [QuotaExceeded("no more")]
    with pytest.raises(QuotaExceeded):
        create(guard)
    assert guard.quota_reached
    clock.now += 61
    assert not guard.quota_reached
