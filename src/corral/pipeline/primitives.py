"""What a pipeline's actions are made of: arguments, the action being run, primitives.

As in the DRP framework: an action receives the event's arguments; a primitive checks a
pre-condition, performs, checks a post-condition; its output becomes the arguments of the next
event. Arguments travel between processes as JSON, so they hold plain values.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any


class Arguments:
    """A keyword namespace: ``Arguments(name="a.fits").name``; plain values only."""

    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)

    def __getattr__(self, name: str) -> Any:
        # only reached for a missing name: the arguments are the instance's own attributes
        raise AttributeError(f"the event's arguments have no {name!r}")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"Arguments({inner})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Arguments) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # mutable, like the namespace it is


@dataclass
class Action:
    """The event being handled: its name and arguments, and what the event table says of it."""

    event: str
    args: Arguments
    name: str = ""
    new_state: str | None = None
    next_event: str | None = None
    recurrent: bool = False


@dataclass
class ProcessingContext:
    """What every action sees: the configuration, the pipeline's state, a logger, the data set,
    and ``push_event`` to follow up with a high-priority event."""

    config: Any
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("corral.pipeline"))
    state: str | None = None
    data_set: Any = None
    push_event: Any = None


class BasePrimitive:
    """A step of a pipeline: ``_pre_condition``, ``_perform``, ``_post_condition``.

    Called, it returns the output of ``_perform`` (default: the action's arguments), or None
    when the pre-condition fails (the step is skipped and no next event follows). A failed
    post-condition raises ``PostConditionFailed``, which the framework hands to the pipeline's
    error hook like any exception of the step.
    """

    def __init__(self, action: Action, context: ProcessingContext) -> None:
        self.action = action
        self.context = context
        self.config = context.config
        self.logger = context.logger

    def _pre_condition(self) -> bool:
        return True

    def _perform(self) -> Any:
        return self.action.args

    def _post_condition(self) -> bool:
        return True

    def apply(self) -> Any:
        if not self._pre_condition():
            self.logger.info("%s: pre-condition not met, skipped", type(self).__name__)
            return None
        output = self._perform()
        if not self._post_condition():
            raise PostConditionFailed(f"{type(self).__name__}: post-condition failed")
        return output

    def __call__(self) -> Any:
        return self.apply()


class PostConditionFailed(Exception):
    """A primitive's post-condition did not hold after it performed."""
