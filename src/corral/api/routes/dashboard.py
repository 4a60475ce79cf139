"""``/ui/api``: the dashboard's data: who is logged in, the overview, pages of processes,
computations and pipelines (the dispatcher's ``views``; each route is one call).

Filtering, sorting and paging happen in the dispatcher, so a page of fifty processes costs
the same with ten or ten thousand in the store.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response

from corral.api.responses import answers, json_body
from corral.api.routes import Caller, Service

router = APIRouter(prefix="/ui/api", tags=["dashboard"])

Sort = Literal["created", "updated", "upid", "state", "engine", "node", "round", "starts"]
Text = Annotated[str | None, Query(min_length=1, max_length=256)]


@router.get("/session", summary="ui_session", response_model=None, responses=answers(None))
async def session(caller: Caller) -> dict[str, Any]:
    """Who the dashboard is logged in as, and the CSRF token its actions carry."""
    return {
        "role": caller.role.value,
        "can_act": caller.can_act,
        "actor": caller.actor,
        "csrf_token": caller.session.csrf if caller.session is not None else None,
    }


@router.get("/overview", summary="ui_overview", response_model=None, responses=answers(None))
async def overview(service: Service) -> dict[str, Any]:
    """Processes by state, the queue, nodes by state and engine, pool price, launches."""
    return service.views.overview()


@router.get("/processes", summary="ui_processes", response_model=None, responses=answers(None, 422))
async def processes(
    service: Service,
    state: Annotated[list[str] | None, Query(description="a state to show; repeatable")] = None,
    engine: Text = None,
    node: Text = None,
    definition: Text = None,
    q: Annotated[str | None, Query(max_length=256, description="part of upid or name")] = None,
    sort: Sort = "created",
    order: Literal["asc", "desc"] = "desc",
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    """One page of the processes that match every filter, and how many match."""
    return json_body(
        service.views.processes(
            states=state or (),
            engine=engine,
            node=node,
            definition=definition,
            text=q or None,
            sort=sort,
            descending=order == "desc",
            offset=offset,
            limit=limit,
        )
    )


@router.get(
    "/computations", summary="ui_computations", response_model=None, responses=answers(None)
)
async def computations(service: Service) -> dict[str, Any]:
    """Computations and shared pools, each with its worker processes."""
    return service.views.computations()


@router.get("/pipelines", summary="ui_pipelines", response_model=None, responses=answers(None))
async def pipelines(service: Service) -> dict[str, Any]:
    """The event queue this dispatcher hosts (pending and in-progress events), and the
    pipelines' worker processes."""
    return service.views.pipelines()
