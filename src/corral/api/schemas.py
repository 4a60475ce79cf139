"""Request models: the shape of every body the API accepts, with the seed's field names.

Models forbid unknown fields and are strict (no ``1`` where a string is wanted), so a 422
names the exact field at fault. Only the shape is checked here; what the values mean (an
unknown definition, an executable that does not exist, a conflicting re-schedule) is the
service's call.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

DefinitionType = Literal["supd", "exec"]
QueueingMode = Literal["NEVER", "ALWAYS", "START_ONLY", "RESTART_ONLY"]
RestartMode = Literal["NEVER", "ALWAYS", "ABNORMAL"]

#: ids travel in URL paths too; a bound keeps a single request from carrying megabytes (the
#: service's own limit, ``dispatcher.validation.MAX_ID``; the API may not import it)
Id = Annotated[str, Field(min_length=1, max_length=200)]
Text = Annotated[str, Field(max_length=4096)]

_SCALARS = (str, int, float, bool)


def _check_constraint(value: Any) -> Any:
    # One message for the whole union: pydantic would otherwise report every member type.
    if isinstance(value, _SCALARS):
        return _check_finite(value)
    if isinstance(value, list) and all(isinstance(item, _SCALARS) for item in value):
        return _check_finite(value)
    raise ValueError("must be a string, number, boolean, or a list of them")


def _check_finite(value: Any) -> Any:
    """Refuse NaN and infinities, which Python's JSON parser lets through but JSON lacks."""
    stack = [value]  # iterative: a deeply nested body must not exhaust the recursion limit
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError("numbers must be finite (JSON has no NaN or Infinity)")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value


ConstraintValue = Annotated[Any, AfterValidator(_check_constraint)]
Configuration = Annotated[dict[str, Any], AfterValidator(_check_finite)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Resources(_Body):
    """What each process of a definition needs of a node; memory in MiB."""

    cpus: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    memory: Annotated[int, Field(ge=0)] | None = None
    gpus: Annotated[int, Field(ge=0)] | None = None


class Executable(_Body):
    """What to run: ``exec`` is the program, ``argv`` its arguments (not including it)."""

    exec: Annotated[str, Field(min_length=1, max_length=4096)]
    argv: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    working_directory: Annotated[str, Field(min_length=1)] | None = None
    resources: Resources | None = None

    def as_doc(self) -> dict[str, Any]:
        """The service's argument: ``resources`` only when given, with the keys given."""
        doc = self.model_dump(exclude={"resources"})
        if self.resources is not None:
            doc["resources"] = self.resources.model_dump(exclude_none=True)
        return doc


class DefinitionBody(_Body):
    """``PUT /definitions/{definition_id}``: ``definition_id`` may repeat the path's."""

    definition_id: Id | None = None
    definition_type: DefinitionType
    executable: Executable
    name: Text | None = None
    description: Text | None = None


class DefinitionCreate(DefinitionBody):
    """``POST /definitions``: the arguments of ``create_definition``."""

    definition_id: Id


class ProcessCreate(_Body):
    """``POST /processes``: the arguments of ``create_process``."""

    upid: Id
    definition_id: Id
    name: Text | None = None


class _ScheduleParameters(_Body):
    definition_id: Id | None = None
    configuration: Configuration | None = None
    subscribers: list[str] | None = None
    constraints: dict[str, ConstraintValue] | None = None
    queueing_mode: QueueingMode | None = None
    restart_mode: RestartMode | None = None
    execution_engine_id: Id | None = None
    node_exclusive: Text | None = None
    name: Text | None = None


class ScheduleBody(_ScheduleParameters):
    """``POST /processes/{upid}/schedule``: ``schedule_process`` without the upid."""

    #: the caller's name for this call: sent again (say, its answer was lost), it does not
    #: run a process that ended since a second time
    request_id: Id | None = None


class ScheduledProcess(_ScheduleParameters):
    """One item of ``POST /processes/schedule``: a schedule_process call with its upid."""

    upid: Id


class ScheduleBatch(_Body):
    """``POST /processes/schedule``: many schedule_process calls, all accepted or none."""

    processes: list[ScheduledProcess]
    #: as ``ScheduleBody.request_id``, for every process of the batch
    request_id: Id | None = None
