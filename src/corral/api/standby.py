"""A dispatcher standing by answers 503 and names the active one; ``/health`` tells which.

When several dispatchers share a PostgreSQL store only the active one serves the API. A
standby answers every request that passed authentication with 503 (``Unavailable``) and the
headers ``Corral-Role: standby`` and, when it knows it, ``Corral-Active: <API URL of the
active dispatcher>``, so a client with several URLs moves on to the next of its list.
``/health`` answers as usual.

The role is read from ``app.state.role`` at each request (set by ``corral serve``; None on a
SQLite store, whose single dispatcher is always active). The OpenAPI schema lists the 503 of
every route but ``/health``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from fastapi import FastAPI
from starlette.datastructures import State
from starlette.types import ASGIApp, Receive, Scope, Send

from corral.api.auth import OPEN_PATHS
from corral.api.errors import error_response
from corral.api.responses import ERROR_BODY_REF, ERROR_MEANINGS
from corral.errors import Unavailable

#: the headers a standby's answers carry
ROLE_HEADER = "Corral-Role"
ACTIVE_HEADER = "Corral-Active"


class RoleView(Protocol):
    """What the API needs to know of this dispatcher's role."""

    @property
    def active(self) -> bool: ...

    @property
    def epoch(self) -> int | None: ...

    @property
    def active_url(self) -> str | None: ...


def describe(role: RoleView | None) -> dict[str, Any]:
    """The role part of ``/health``: nothing for the single dispatcher of a SQLite store."""
    if role is None:
        return {}
    return {
        "role": "active" if role.active else "standby",
        "epoch": role.epoch,
        "active": role.active_url,
    }


class StandbyMiddleware:
    """Answer 503 in place of the routes while this dispatcher stands by."""

    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app = app
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        role: RoleView | None = getattr(self._state, "role", None)
        if (
            role is not None
            and not role.active
            and scope["type"] == "http"
            and scope["path"] not in OPEN_PATHS
        ):
            await _standby_response(role)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _standby_response(role: RoleView) -> Any:
    if role.active_url:
        where = f"the active one is {role.active_url} (epoch {role.epoch})"
    else:
        where = "no dispatcher is active at the moment; a standby takes over within seconds"
    response = error_response(Unavailable(f"this corral dispatcher is standing by: {where}"))
    response.headers[ROLE_HEADER] = "standby"
    response.headers["Retry-After"] = "1"
    if role.active_url:
        response.headers[ACTIVE_HEADER] = role.active_url
    return response


def install(app: FastAPI) -> None:
    """Answer for a standby (inside auth) and list its 503 in the OpenAPI schema."""
    app.add_middleware(StandbyMiddleware, state=app.state)
    app.openapi = _documented(app.openapi)  # type: ignore[method-assign]


def _documented(build: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    def openapi() -> dict[str, Any]:
        schema = build()
        unavailable = {
            "description": ERROR_MEANINGS[503],
            "content": {"application/json": {"schema": {"$ref": ERROR_BODY_REF}}},
        }
        for path, operations in schema.get("paths", {}).items():
            if path not in OPEN_PATHS:
                for operation in operations.values():
                    operation.setdefault("responses", {}).setdefault("503", unavailable)
        return schema

    return openapi
