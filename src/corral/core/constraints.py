"""Fit checks between one process and one node; each returns ``None`` (fits) or a Reason.

A reason is data, not a log line: the matchmaker picks the most telling one for a process
that cannot be placed, and the dispatcher stores its sentence as ``waiting_reason``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from corral.core.model import ConstraintValue


class ReasonKind(Enum):
    """Why a process does not fit, ordered from the least to the most specific."""

    NO_NODES = 1
    CONSTRAINTS = 2
    EXCLUSIVE = 3
    RESOURCES = 4
    SLOTS = 5
    UNKNOWN_ENGINE = 6


@dataclass(frozen=True, slots=True)
class Reason:
    kind: ReasonKind
    message: str


def constraint_text(value: ConstraintValue) -> str | list[str]:
    """Constraints compare as text, so ``zone = 1`` in TOML matches ``{"zone": "1"}``."""
    if isinstance(value, list):
        return [_scalar_text(v) for v in value]
    return _scalar_text(value)


def _scalar_text(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def unmet_constraint(
    constraints: Mapping[str, ConstraintValue], properties: Mapping[str, str]
) -> str | None:
    """The first constraint key the node's properties do not satisfy, or None.

    A value constraint needs that exact property value, a list needs one of its values, and
    a key the node lacks never matches.
    """
    for key, wanted in constraints.items():
        have = properties.get(key)
        if have is None:
            return key
        allowed = constraint_text(wanted)
        if isinstance(allowed, list):
            if have not in allowed:
                return key
        elif have != allowed:
            return key
    return None


def describe_constraints(constraints: Mapping[str, ConstraintValue]) -> str:
    return ", ".join(f"{k}={constraint_text(v)}" for k, v in sorted(constraints.items()))
