"""What becomes of a process whose node is disconnected: its disconnect policy.

A node whose heartbeats have been missing for ``heartbeat_missing`` seconds is
*disconnected*, not yet lost: it may be on the far side of a network partition, still
running everything it was given. Each process on it follows the policy read from
``configuration.corral.disconnect``:

- ``grace`` (seconds, default 0): how long the process stays assigned to the disconnected
  node, still in its state and its round, before it is treated as lost (its restart mode
  then applies, as for any lost node). 0 keeps the behaviour of a node that is simply lost.
- ``replace`` (default false): do not wait; a replacement round starts elsewhere as soon as
  the node is disconnected. ``grace`` is then meaningless, so giving both is an error.
- ``at_most_once`` (default false): never two copies at once. A process whose
  ``restart_mode`` is NEVER is at-most-once too.

Which copy survives a heal is decided by rounds, never by a setting: the newest round always
wins, since ``(round, state)`` only moves forward. Without a replacement (within the grace)
the original is still the current round and simply goes on; once a replacement round
exists (``replace``, or the grace is over) the original is stale and its agent is told to
kill it when it reconnects.

An at-most-once process is never started again while its earlier round may still run on a
node nobody can reach: its next round waits for a :class:`Fence`, the moment by which that
node's agent has certainly stopped it on its own (the engine's ``stop_after_disconnect``).
Without that setting nobody knows when the old copy stops, so the process fails instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

from corral.core.model import ProcessRequest
from corral.core.process_states import RestartMode
from corral.errors import InvalidRequest

#: where a process's disconnect policy lives in its ``configuration``
POLICY_PATH = ("corral", "disconnect")
_WHERE = "configuration." + ".".join(POLICY_PATH)

#: seconds added to a fence for what neither side measures exactly (report delivery,
#: reaping, the tick that notices)
FENCE_MARGIN = 1.0


@dataclass(frozen=True, slots=True)
class DisconnectPolicy:
    #: seconds a process stays on its disconnected node before it is lost
    grace: float = 0.0
    #: start a replacement elsewhere as soon as the node is disconnected
    replace: bool = False
    #: never two copies at once (also implied by restart_mode NEVER)
    at_most_once: bool = False

    @classmethod
    def from_configuration(cls, configuration: Mapping[str, Any]) -> DisconnectPolicy:
        """Read ``configuration.corral.disconnect``; errors name the offending field."""
        section: Any = configuration
        for key in POLICY_PATH:
            if not isinstance(section, Mapping) or key not in section:
                return _DEFAULT
            section = section[key]
        if not isinstance(section, Mapping):
            raise InvalidRequest(f"{_WHERE} must be an object", field=_WHERE)
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in section.items():
            path = f"{_WHERE}.{key}"
            if key not in known:
                raise InvalidRequest(
                    f"{path} is not a disconnect setting; expected one of "
                    f"{', '.join(sorted(known))}",
                    field=path,
                )
            values[key] = _checked(path, key, value)
        policy = cls(**values)
        if policy.replace and policy.grace > 0:
            raise InvalidRequest(
                f"{_WHERE}: a process replaced at once (replace) has no grace to wait; "
                "give grace or replace, not both",
                field=f"{_WHERE}.replace",
            )
        if policy.replace and policy.at_most_once:
            raise InvalidRequest(
                f"{_WHERE}: an at_most_once process cannot be replaced while its node "
                "may still run it",
                field=f"{_WHERE}.replace",
            )
        return policy

    @classmethod
    def of(cls, request: ProcessRequest) -> DisconnectPolicy:
        """The policy of a scheduled process; the default for a configuration stored
        before this setting was checked (a loop must not stop on an old record)."""
        if not request.configuration:
            return _DEFAULT
        try:
            return cls.from_configuration(request.configuration)
        except InvalidRequest:
            return _DEFAULT


_DEFAULT = DisconnectPolicy()


def _checked(path: str, key: str, value: Any) -> Any:
    if key == "grace":
        # "not value >= 0" also refuses NaN, which compares false with everything
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise InvalidRequest(f"{path} must be a number of seconds ≥ 0", field=path)
        return float(value)
    if not isinstance(value, bool):
        raise InvalidRequest(f"{path} must be true or false", field=path)
    return value


def is_at_most_once(request: ProcessRequest) -> bool:
    """Must two copies of this process never run at once?"""
    return request.restart_mode is RestartMode.NEVER or DisconnectPolicy.of(request).at_most_once


def check_request(request: ProcessRequest) -> DisconnectPolicy:
    """The policy of ``request``, refusing what contradicts its restart mode."""
    policy = DisconnectPolicy.of(request)
    if policy.replace and request.restart_mode is RestartMode.NEVER:
        raise InvalidRequest(
            f"{_WHERE}.replace: a process whose restart_mode is NEVER is at-most-once "
            "and is never replaced",
            field=f"{_WHERE}.replace",
        )
    return policy


class Verdict(Enum):
    """What to do now with a process on a disconnected node."""

    #: within its grace: it stays assigned, in its state and round
    KEEP = "keep"
    #: its grace is over: it is lost, and its restart mode applies
    LOSE = "lose"
    #: it is replaced at once: lost, and its restart mode applies
    REPLACE = "replace"


def verdict(policy: DisconnectPolicy, disconnected_for: float) -> Verdict:
    """The fate of a process whose node has been disconnected ``disconnected_for`` s."""
    if policy.replace:
        return Verdict.REPLACE
    if disconnected_for >= policy.grace:
        return Verdict.LOSE
    return Verdict.KEEP


def describe(verdict_: Verdict, policy: DisconnectPolicy, node: str) -> str:
    """Why the round ended, for ``end_reason`` and the waiting reason that follows."""
    if verdict_ is Verdict.REPLACE:
        return f"node {node} disconnected; replaced at once (disconnect.replace)"
    return f"node {node} lost: disconnected for longer than its grace ({policy.grace:g} s)"


@dataclass(frozen=True, slots=True)
class Fence:
    """Until when an earlier round may still run on a node nobody can reach.

    ``until`` is a wall-clock time; None means nobody knows (its agent does not stop on
    its own), so an at-most-once process may never be started again automatically.
    """

    until: float | None


def fence(
    disconnected_since: float,
    heartbeat_period: float,
    stop_after_disconnect: float | None,
    terminate_grace: float,
) -> Fence:
    """When the agent of a node disconnected at ``disconnected_since`` has certainly
    stopped its processes on its own.

    The node was last heard ``heartbeat_missing`` seconds before it was disconnected. Its
    agent gives up its link after the same silence (plus a heartbeat it may have sent
    meanwhile), waits ``stop_after_disconnect``, sends SIGTERM and, ``terminate_grace``
    later, SIGKILL.
    """
    if stop_after_disconnect is None:
        return Fence(None)
    return Fence(
        disconnected_since
        + 2 * heartbeat_period
        + stop_after_disconnect
        + terminate_grace
        + FENCE_MARGIN
    )
