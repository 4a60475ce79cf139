"""The API's routes, one module per noun; each route is a few lines over one service call.

Routes reach the service through :data:`Service`, a dependency reading ``app.state``, so
the modules hold no globals and one process can serve several apps in tests.
:func:`one_value_each` runs before every route.
"""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from corral.api._service import DispatcherService
from corral.errors import InvalidRequest

#: the query parameters a route reads as a list; any other must be given once
REPEATABLE = frozenset({"state"})


async def _service(request: Request) -> DispatcherService:
    # async on purpose: FastAPI runs a plain def dependency in a worker thread, which costs
    # a thread hop per request and would touch the service off its event loop.
    return cast(DispatcherService, request.app.state.service)


Service = Annotated[DispatcherService, Depends(_service)]


async def one_value_each(request: Request) -> None:
    """Refuse a query parameter given twice: FastAPI would silently keep the last one, so
    ``?upid=a&upid=b`` would be read as a question the caller did not ask."""
    seen: set[str] = set()
    for key, _ in request.query_params.multi_items():
        if key and key in seen and key not in REPEATABLE:  # an empty name names nothing
            raise InvalidRequest(f"{key}: given more than once; give it once", field=key)
        seen.add(key)
