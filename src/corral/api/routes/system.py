"""Health, the debugging dump, nodes and engines."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from corral.api.responses import DumpOut, EngineOut, HealthOut, NodeOut, answers, json_body
from corral.api.routes import Actor, Service
from corral.api.standby import describe

router = APIRouter(tags=["system"])


@router.get(
    "/health", summary="health (no token needed)", response_model=None, responses=answers(HealthOut)
)
async def health(request: Request) -> dict[str, Any]:
    """``status`` is ``ok``. On a PostgreSQL store, whose dispatchers share a lease, also
    ``role`` (``active`` or ``standby``), the lease's ``epoch`` and the ``active``
    dispatcher's URL."""
    return {"status": "ok", **describe(request.app.state.role)}


@router.get("/dump", summary="dump", response_model=None, responses=answers(DumpOut))
async def dump(service: Service) -> Response:
    return json_body(service.dump())


@router.get(
    "/metrics",
    summary="metrics (Prometheus text format)",
    response_class=PlainTextResponse,
    responses=answers(None, 503),
)
async def metrics(service: Service) -> Response:
    return Response(service.metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/nodes", summary="list_nodes", response_model=None, responses=answers(list[NodeOut]))
async def list_nodes(service: Service) -> Response:
    return json_body(service.list_nodes())


@router.get(
    "/nodes/{node_id}",
    summary="describe_node",
    response_model=None,
    responses=answers(NodeOut, 404, 422),
)
async def describe_node(service: Service, node_id: str) -> dict[str, Any]:
    return service.describe_node(node_id)


@router.post(
    "/nodes/{node_id}/{action}",
    summary="node_action (hold, drain, run, kill)",
    response_model=None,
    responses=answers(NodeOut, 404, 409, 422),
)
async def node_action(
    service: Service, actor: Actor, node_id: str, action: Literal["hold", "drain", "run", "kill"]
) -> dict[str, Any]:
    """``hold``: keep it, place nothing new; ``drain``: place nothing new, retire it once
    empty; ``run``: back to normal; ``kill``: retire it now, its processes following their
    restart modes."""
    return await service.node_action(node_id, action, actor=actor)


@router.get(
    "/engines", summary="list_engines", response_model=None, responses=answers(list[EngineOut])
)
async def list_engines(service: Service) -> Response:
    return json_body(service.list_engines())
