"""Cloud trouble, handled once around any driver (no driver retries on its own).

:class:`Guarded` wraps a driver and keeps the pool from hammering a cloud that says no:

- **rate limits**: after a ``RateLimited`` error every call fails fast until its
  ``retry_at``; calls are also capped at ``ops_per_second`` (a token bucket) and creates at
  ``max_concurrent_creates`` in flight;
- **quota**: after ``QuotaExceeded`` no instance is created until one is destroyed or
  ``quota_retry`` seconds pass;
- **capacity**: after ``CapacityUnavailable`` creates back off for ``capacity_backoff``
  seconds, doubling while the cloud keeps refusing, for the instance type or for all.

:meth:`Guarded.trouble` says in words why creating is paused, for waiting reasons.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from corral.drivers.base import (
    CapacityUnavailable,
    CloudError,
    Driver,
    Instance,
    NodeSpec,
    QuotaExceeded,
    RateLimited,
)
from corral.wire.messages import ProcessReport

ANY_TYPE = ""


@dataclass(frozen=True, slots=True)
class Limits:
    ops_per_second: float = 20.0
    max_concurrent_creates: int = 10
    quota_retry: float = 60.0
    capacity_backoff: float = 5.0
    capacity_backoff_cap: float = 300.0


#: for drivers whose "cloud" is this machine or this process: nothing to throttle
UNLIMITED = Limits(ops_per_second=1e9, max_concurrent_creates=1_000_000)


class Guarded:
    """A driver wrapped in the cloud-trouble rules above; itself a driver."""

    def __init__(
        self,
        driver: Driver,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.driver = driver
        # a driver may say how hard it can be driven (the local and fake ones: unlimited)
        self.limits = limits or getattr(driver, "limits", None) or Limits()
        self._clock = clock
        self._blocked_until = 0.0
        self._tokens = self.limits.ops_per_second
        self._refilled = clock()
        self._creating = 0
        self._quota_since: float | None = None
        #: instance type ("" for every type) → (retry at, current back-off)
        self._capacity: dict[str, tuple[float, float]] = {}

    async def create(self, spec: NodeSpec, tags: Mapping[str, str]) -> Instance:
        kind = _instance_type(spec)
        now = self._clock()
        pause = self._pause(kind)
        if pause is not None:
            raise pause
        if self._creating >= self.limits.max_concurrent_creates:
            raise RateLimited(
                f"{self._creating} creates in flight (max_concurrent_creates)", now + 1.0
            )
        self._take_token()
        self._creating += 1
        try:
            instance = await self.driver.create(spec, tags)
        except RateLimited as exc:
            self._blocked_until = max(self._blocked_until, exc.retry_at)
            raise
        except QuotaExceeded:
            self._quota_since = self._clock()
            raise
        except CapacityUnavailable as exc:
            self._back_off(kind if exc.instance_type_only else ANY_TYPE)
            raise
        finally:
            self._creating -= 1
        self._capacity.pop(kind, None)
        self._capacity.pop(ANY_TYPE, None)
        return instance

    async def list(self) -> list[Instance]:
        self._check_rate()
        try:
            return await self.driver.list()
        except RateLimited as exc:
            self._blocked_until = max(self._blocked_until, exc.retry_at)
            raise

    async def last_reports(self, instance_id: str) -> Sequence[ProcessReport] | None:
        return await self.driver.last_reports(instance_id)  # of what is left: no cloud call

    async def destroy(self, instance_id: str) -> None:
        self._check_rate()
        try:
            await self.driver.destroy(instance_id)
        except RateLimited as exc:
            self._blocked_until = max(self._blocked_until, exc.retry_at)
            raise
        self._quota_since = None  # an instance went away: the quota has room again

    @property
    def quota_reached(self) -> bool:
        """The cloud refused an instance for quota, and none has gone away since."""
        since = self._quota_since
        return since is not None and self._clock() - since < self.limits.quota_retry

    def trouble(self, instance_type: str = ANY_TYPE) -> str | None:
        """Why creating an instance (of this type) is paused now, or None."""
        pause = self._pause(instance_type)
        return None if pause is None else str(pause)

    def _pause(self, instance_type: str) -> CloudError | None:
        """The error a create would fail fast with now, or None."""
        # Fixed wording (no countdown): the text lands in waiting reasons, which are
        # rewritten whenever it changes.
        now = self._clock()
        if now < self._blocked_until:
            return RateLimited("cloud rate limited", self._blocked_until)
        if self._quota_since is not None:
            if now - self._quota_since < self.limits.quota_retry:
                return QuotaExceeded("cloud quota reached")
            self._quota_since = None
        for kind in (ANY_TYPE, instance_type):
            retry_at, _ = self._capacity.get(kind, (0.0, 0.0))
            if now < retry_at:
                what = f" for type {kind}" if kind else ""
                return CapacityUnavailable(
                    f"no cloud capacity{what}", instance_type_only=bool(kind)
                )
        return None

    def _check_rate(self) -> None:
        now = self._clock()
        if now < self._blocked_until:
            raise RateLimited("cloud rate limited", self._blocked_until)
        self._take_token()

    def _take_token(self) -> None:
        now = self._clock()
        rate = self.limits.ops_per_second
        self._tokens = min(rate, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens < 1.0:
            raise RateLimited(
                f"over {rate:g} cloud calls per second", now + (1.0 - self._tokens) / rate
            )
        self._tokens -= 1.0

    def _back_off(self, kind: str) -> None:
        _, previous = self._capacity.get(kind, (0.0, 0.0))
        delay = min(
            previous * 2 if previous else self.limits.capacity_backoff,
            self.limits.capacity_backoff_cap,
        )
        self._capacity[kind] = (self._clock() + delay, delay)


def _instance_type(spec: NodeSpec) -> str:
    return spec.engine.engine_id
