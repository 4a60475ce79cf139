"""``/processes``: create, schedule, describe, restart, terminate, wait for, read logs and
histories."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response

from corral.api import redact
from corral.api.responses import LogChunkOut, ProcessOut, answers, json_body
from corral.api.routes import Actor, Caller, Service
from corral.api.schemas import ProcessCreate, ScheduleBatch, ScheduleBody

router = APIRouter(prefix="/processes", tags=["processes"])

#: a long poll is held at most this long; clients poll again (the Client does so itself)
MAX_WAIT = 300.0
#: the largest log chunk one request may ask for
MAX_LOG_CHUNK = 4 * 1024 * 1024


@router.post(
    "", summary="create_process", response_model=None, responses=answers(ProcessOut, 409, 422, 507)
)
async def create_process(body: ProcessCreate, service: Service, actor: Actor) -> dict[str, Any]:
    return await service.create_process(body.upid, body.definition_id, body.name, actor=actor)


@router.get(
    "", summary="describe_processes", response_model=None, responses=answers(list[ProcessOut])
)
async def describe_processes(service: Service, caller: Caller) -> Response:
    return json_body(redact.processes(caller, service.describe_processes()))


@router.post(
    "/schedule",
    summary="schedule_processes",
    response_model=None,
    responses=answers(list[ProcessOut], 409, 422, 507),
    description="Schedule many processes in one request and one commit: every item is "
    "accepted, or none is (the error names the item).",
)
async def schedule_processes(body: ScheduleBatch, service: Service, actor: Actor) -> Response:
    items = [item.model_dump() for item in body.processes]
    return json_body(
        await service.schedule_processes(items, request_id=body.request_id, actor=actor)
    )


@router.get(
    "/{upid}",
    summary="describe_process",
    response_model=None,
    responses=answers(ProcessOut, 404, 422),
)
async def describe_process(upid: str, service: Service, caller: Caller) -> dict[str, Any]:
    return redact.process(caller, service.describe_process(upid))


@router.post(
    "/{upid}/schedule",
    summary="schedule_process",
    response_model=None,
    responses=answers(ProcessOut, 409, 422, 507),
)
async def schedule_process(
    upid: str, body: ScheduleBody, service: Service, actor: Actor
) -> dict[str, Any]:
    return await service.schedule_process(upid, **body.model_dump(), actor=actor)


@router.post(
    "/{upid}/restart",
    summary="restart_process",
    response_model=None,
    responses=answers(ProcessOut, 404, 409, 422),
)
async def restart_process(upid: str, service: Service, actor: Actor) -> dict[str, Any]:
    return await service.restart_process(upid, actor=actor)


@router.post(
    "/{upid}/terminate",
    summary="terminate_process",
    response_model=None,
    responses=answers(ProcessOut, 404, 422),
)
async def terminate_process(upid: str, service: Service, actor: Actor) -> dict[str, Any]:
    return await service.terminate_process(upid, actor=actor)


@router.get(
    "/{upid}/wait",
    summary="wait_process",
    response_model=None,
    responses=answers(ProcessOut, 404, 408, 422),
    description=(
        "Long poll: answer once the process is in one of `state` (or terminal, when no "
        f"`state` is given or none is reached), or 408 after `timeout` seconds (at most "
        f"{MAX_WAIT:g}; larger values are capped)."
    ),
)
async def wait_process(
    upid: str,
    service: Service,
    caller: Caller,
    state: Annotated[list[str] | None, Query(description="a state to wait for; repeatable")] = None,
    timeout: Annotated[float, Query(ge=0, allow_inf_nan=False)] = 30.0,  # noqa: ASYNC109
) -> dict[str, Any]:
    return redact.process(caller, await service.wait_process(upid, state, min(timeout, MAX_WAIT)))


@router.get(
    "/{upid}/logs",
    summary="read_log",
    response_model=None,
    responses=answers(LogChunkOut, 404, 422, 503),
)
async def read_log(
    upid: str,
    service: Service,
    stream: Literal["stdout", "stderr"] = "stdout",
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LOG_CHUNK)] = 65536,
) -> dict[str, Any]:
    return await service.read_log(upid, stream, offset, limit)


@router.get(
    "/{upid}/history",
    summary="process_history",
    response_model=None,
    responses=answers(None, 404, 422),
    description="The process's last state changes (round, state, time, why), oldest first; "
    "the dispatcher keeps the last `kept` of them.",
)
async def process_history(upid: str, service: Service) -> dict[str, Any]:
    return service.views.history(upid)
