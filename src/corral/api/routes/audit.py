"""``/audit``: who did what, newest first (the dispatcher's audit log)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from corral.api.responses import answers, json_body
from corral.api.routes import Service

router = APIRouter(tags=["audit"])


@router.get(
    "/audit",
    summary="audit_log",
    response_model=None,
    responses=answers(None, 422),
    description="Operators' actions, newest first: who (the token or dashboard session, and "
    "its address), what, on which target, and when. `before` (an entry id) pages back; "
    "`target` keeps the entries about one process, node or definition.",
)
async def audit_log(
    service: Service,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[int | None, Query(ge=1)] = None,
    target: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
) -> Response:
    return json_body(service.views.audit_log(limit, before, target))
