"""The API's routes, one module per noun; each route is a few lines over one service call.

Routes reach the service through :data:`Service`, a dependency reading ``app.state``, so
the modules hold no globals and one process can serve several apps in tests.
"""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from corral.api._service import DispatcherService


async def _service(request: Request) -> DispatcherService:
    # async on purpose: FastAPI runs a plain def dependency in a worker thread, which costs
    # a thread hop per request and would touch the service off its event loop.
    return cast(DispatcherService, request.app.state.service)


Service = Annotated[DispatcherService, Depends(_service)]
