"""What each route answers, described for the OpenAPI schema: bodies and error statuses.

Routes return the plain dicts the service builds, unvalidated (a list of 100,000 processes
costs no model validation on the way out); these models only describe them. The
schemathesis run in ``tests/faults`` checks every answer of the real dispatcher against
them, so a key added to a record without its line here fails that run.

Every error leaves as :class:`ErrorBody` (``api.errors`` builds it); a route lists the
statuses it may answer with :func:`answers`. The 401 of a route that needs the token is
added by ``api.auth``, which knows which routes those are.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI, Response
from pydantic import BaseModel
from pydantic_core import to_json

ERROR_BODY_REF = "#/components/schemas/ErrorBody"

#: what an error status means, in every route's description
ERROR_MEANINGS = {
    401: "the bearer token is missing or wrong",
    403: "the caller may not do this: a read-only token, a dashboard action without its CSRF"
    " token, or a browser on a foreign Host or Origin",
    404: "no such definition, process, node, log or route",
    408: "the wait ended before the process reached the state",
    409: "the request conflicts with what exists (an id taken by something else)",
    422: "the request is invalid; `field` names the part at fault",
    503: "the dispatcher cannot answer now (a node that holds a log is away, or this"
    " dispatcher stands by: `Corral-Active` names the active one)",
    507: "the store's disk is nearly full: new work waits until space is freed",
}


class ErrorDetail(BaseModel):
    #: the ``corral.errors`` class, which ``corral.Client`` raises again
    type: str
    message: str
    #: the request field at fault, when one is
    field: str | None = None


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer."""

    error: ErrorDetail


class ResourcesOut(BaseModel):
    cpus: float
    memory: int
    gpus: int


class ExecutableOut(BaseModel):
    exec: str
    argv: list[str]
    env: dict[str, str]
    working_directory: str | None
    resources: ResourcesOut | None = None


class DefinitionOut(BaseModel):
    definition_id: str
    definition_type: str
    executable: ExecutableOut
    name: str | None
    description: str | None


class ProcessOut(BaseModel):
    """A process as ``describe_process`` gives it (and every route that returns one)."""

    upid: str
    definition_id: str
    name: str | None
    #: e.g. ``500-RUNNING``
    state: str
    round: int
    configuration: dict[str, Any]
    subscribers: list[str]
    constraints: dict[str, Any]
    queueing_mode: str
    restart_mode: str
    execution_engine_id: str | None
    node_exclusive: str | None
    resources: ResourcesOut | None
    assigned: str | None
    hostname: str | None
    engine: str | None
    pid: int | None
    starts: int
    exit_code: int | None
    signal: int | None
    restart_attempts: int
    dispatches: int
    waiting_reason: str | None
    end_reason: str | None
    created_at: float
    updated_at: float
    started_at: float | None
    ended_at: float | None
    #: while it waits out its disconnect grace on a disconnected node: since when (wall time)
    disconnected_since: float | None = None
    #: the request id of the schedule_process call that last scheduled it, if it had one
    request_id: str | None = None


class NodeOut(BaseModel):
    node_id: str
    engine: str
    state: str
    slots: int
    hostname: str | None
    labels: dict[str, str]
    idle_behavior: str
    instance_id: str | None
    created_at: float
    instance_type: str | None
    price: float | None
    health: str
    used: int
    connected: bool
    #: seconds since the agent was last heard from
    last_heard: float | None


class EngineOut(BaseModel):
    engine_id: str
    driver: str
    slots: int
    base_need: int
    maximum_vms: int
    labels: dict[str, str]
    default: bool


class LogChunkOut(BaseModel):
    upid: str
    stream: Literal["stdout", "stderr"]
    data: str
    offset: int
    next_offset: int
    size: int


class HealthOut(BaseModel):
    status: Literal["ok"]
    #: on a shared (PostgreSQL) store only: this dispatcher's role, the lease's epoch and
    #: the active dispatcher's API URL (``api.standby``)
    role: Literal["active", "standby"] | None = None
    epoch: int | None = None
    active: str | None = None


class ProcessCounts(BaseModel):
    total: int
    by_state: dict[str, int]


class DumpOut(BaseModel):
    """``/dump``: a debugging summary; its keys may grow."""

    engines: list[EngineOut]
    nodes: list[NodeOut]
    processes: ProcessCounts
    queue: list[str]
    queue_length: int
    delayed_restarts: int
    definitions: int
    agents: dict[str, int]


def json_body(content: Any) -> Response:
    """``content`` as a JSON response, encoded at once by pydantic's encoder.

    Routes whose answer is a list or a page (their bodies only described, with
    ``response_model=None``) return it through this: FastAPI would otherwise walk every value
    through ``jsonable_encoder``, in Python, which for the 10,000 records of a large
    ``describe_processes`` took three times as long as the rest.
    """
    return Response(to_json(content), media_type="application/json")


def answers(model: Any, *errors: int) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses=``: ``model`` at 200 (None: no body described) and the error
    body at each of ``errors``."""
    described: dict[int | str, dict[str, Any]] = {}
    if model is not None:
        described[200] = {"model": model}
    for status in errors:
        described[status] = {"model": ErrorBody, "description": ERROR_MEANINGS[status]}
    return described


def install(app: FastAPI) -> None:
    """Describe every error answer as JSON, whatever the route's own media type (FastAPI
    would give ``/metrics``'s errors its ``text/plain``): ``api.errors`` always sends JSON."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                for status, answer in operation.get("responses", {}).items():
                    if status[:1] in ("4", "5"):
                        answer["content"] = {
                            "application/json": {"schema": {"$ref": ERROR_BODY_REF}}
                        }
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
