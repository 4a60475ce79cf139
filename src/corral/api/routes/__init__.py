"""The API's routes, one module per noun; each route is a few lines over one service call.

Routes reach the service through :data:`Service`, a dependency reading ``app.state``, so
the modules hold no globals and one process can serve several apps in tests. :data:`Caller`
is the principal the auth middleware found; :data:`Actor` names it for the audit log.
"""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from corral.api._service import DispatcherService
from corral.api.access import Principal
from corral.api.auth import principal_of
from corral.errors import Unauthorized


async def _service(request: Request) -> DispatcherService:
    # async on purpose: FastAPI runs a plain def dependency in a worker thread, which costs
    # a thread hop per request and would touch the service off its event loop.
    return cast(DispatcherService, request.app.state.service)


async def _caller(request: Request) -> Principal:
    principal = principal_of(request.scope)
    if principal is None:  # only open routes lack one, and they do not ask
        raise Unauthorized("this route needs a token")
    return principal


async def _actor(request: Request) -> str:
    return (await _caller(request)).actor


Service = Annotated[DispatcherService, Depends(_service)]
Caller = Annotated[Principal, Depends(_caller)]
Actor = Annotated[str, Depends(_actor)]
