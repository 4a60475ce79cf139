"""Whether an ended round is followed by another, and after how long.

The backoff is exponential, jittered and capped. The first restart after a healthy run is
immediate (a service killed by accident is back at once); each further quick failure waits
longer. A run that lasted ``healthy_after`` seconds resets the count. With
``max_attempts`` set, the count past it ends the process as FAILED.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

from corral.core.process_states import RestartMode
from corral.errors import InvalidRequest

#: where a process's restart policy lives in its ``configuration``
POLICY_PATH = ("corral", "restart")


class Outcome(Enum):
    """How a round ended, as far as the restart policy cares."""

    EXITED_OK = "exited_ok"
    FAILED = "failed"
    NODE_LOST = "node_lost"


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    backoff_initial: float = 0.5
    backoff_multiplier: float = 2.0
    backoff_max: float = 30.0
    #: the delay varies by ± this fraction, so a crowd of failures does not retry in step
    jitter: float = 0.2
    max_attempts: int | None = None
    healthy_after: float = 10.0

    @classmethod
    def from_configuration(cls, configuration: Mapping[str, Any]) -> RestartPolicy:
        """Read ``configuration.corral.restart``; errors name the offending field."""
        section: Any = configuration
        for key in POLICY_PATH:
            if not isinstance(section, Mapping) or key not in section:
                return cls()
            section = section[key]
        where = "configuration." + ".".join(POLICY_PATH)
        if not isinstance(section, Mapping):
            raise InvalidRequest(f"{where} must be an object", field=where)
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in section.items():
            if key not in known:
                raise InvalidRequest(
                    f"{where}.{key} is not a restart setting; expected one of "
                    f"{', '.join(sorted(known))}",
                    field=f"{where}.{key}",
                )
            values[key] = _checked(f"{where}.{key}", key, value)
        return cls(**values)


def _checked(path: str, key: str, value: Any) -> Any:
    if key == "max_attempts":
        if value is None or (type(value) is int and value >= 0):
            return value
        raise InvalidRequest(f"{path} must be a whole number ≥ 0 or null", field=path)
    # "not value >= 0" also refuses NaN, which compares false with everything
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise InvalidRequest(f"{path} must be a number ≥ 0", field=path)
    if key == "backoff_multiplier" and value < 1:
        raise InvalidRequest(f"{path} must be ≥ 1", field=path)
    if key == "jitter" and value > 1:
        raise InvalidRequest(f"{path} must be between 0 and 1", field=path)
    return float(value)


@dataclass(frozen=True, slots=True)
class RestartDecision:
    restart: bool
    #: seconds to wait before the next round is requested
    delay: float
    #: the new count of restarts since the last healthy run
    attempts: int
    reason: str
    #: the restart was refused because max_attempts was reached
    gave_up: bool = False


def backoff_delay(policy: RestartPolicy, attempt: int, rand: float) -> float:
    """Delay before restart number ``attempt`` (1-based) since the last healthy run.

    ``rand`` is a uniform number in [0, 1) supplied by the caller, keeping this pure.
    """
    if attempt <= 1:
        return 0.0
    if policy.backoff_initial == 0:
        return 0.0
    try:
        growth = policy.backoff_multiplier ** min(attempt - 2, 64)
    except OverflowError:  # float ** int raises instead of giving inf
        growth = math.inf
    base = min(policy.backoff_initial * growth, policy.backoff_max)
    jittered = base * (1.0 + policy.jitter * (2.0 * rand - 1.0))
    return max(0.0, min(jittered, policy.backoff_max))


def decide(
    mode: RestartMode,
    outcome: Outcome,
    policy: RestartPolicy,
    attempts: int,
    ran_for: float,
    rand: float,
) -> RestartDecision:
    """Restart or not, after a round that ran ``ran_for`` seconds and ended by ``outcome``."""
    if mode is RestartMode.NEVER:
        return RestartDecision(False, 0.0, attempts, "restart_mode is NEVER")
    if mode is RestartMode.ABNORMAL and outcome is Outcome.EXITED_OK:
        return RestartDecision(False, 0.0, attempts, "exited normally")
    if ran_for >= policy.healthy_after:
        attempts = 0
    attempts += 1
    if policy.max_attempts is not None and attempts > policy.max_attempts:
        return RestartDecision(
            False,
            0.0,
            attempts - 1,
            f"gave up after {policy.max_attempts} restart(s) (max_attempts) without a "
            f"healthy run of {policy.healthy_after:g} s",
            gave_up=True,
        )
    delay = backoff_delay(policy, attempts, rand)
    return RestartDecision(True, delay, attempts, f"restart {attempts} in {delay:.2f} s")
