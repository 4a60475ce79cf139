"""Bearer-token authentication (the token file itself is ``corral.secretfile``).

One ASGI middleware guards every route, every method, unknown paths and WebSocket
handshakes alike, except ``/health``, which a load balancer or a probe calls without
secrets and which tells nothing but "up". The API description (``/openapi.json``) and
``/metrics`` need the token too: they list the operations, versions, engines and node counts
of this dispatcher, which are nobody's business but its users'. The corral CLI and Client
carry the token anyway; Prometheus sends it with ``authorization: credentials_file``.
Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from corral.api.errors import error_response
from corral.api.responses import ERROR_BODY_REF, ERROR_MEANINGS
from corral.errors import CorralError, Unauthorized

#: routes served without a token; everything else, unknown paths included, needs one
OPEN_PATHS = frozenset({"/health"})

_HOW = (
    "send the header 'Authorization: Bearer <token>'; the token is in the server's "
    "home directory (~/.corral/token unless CORRAL_HOME says otherwise), where the corral "
    "CLI and Client find it, or pass it with --token or CORRAL_TOKEN"
)


class BearerAuthMiddleware:
    """Answer 401 unless the request carries ``Authorization: Bearer <token>``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            problem = self._problem(scope)
            if problem is not None:
                await error_response(Unauthorized(f"{problem}: {_HOW}"))(scope, receive, send)
                return
        elif scope["type"] == "websocket" and self._problem(scope) is not None:
            # no route speaks WebSocket today; one added later is guarded all the same
            await receive()  # the websocket.connect; closing now refuses the handshake
            await send({"type": "websocket.close", "code": 1008, "reason": "unauthorized"})
            return
        await self.app(scope, receive, send)

    def _problem(self, scope: Scope) -> str | None:
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if header is None:
            return "missing bearer token"
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not given.strip():
            return "the Authorization header is not a bearer token"
        # bytes on both sides: compare_digest refuses non-ASCII str, which a client controls
        if not hmac.compare_digest(given.strip(), self._token):
            return "wrong token"
        return None


def install(app: FastAPI, token: str) -> None:
    """Guard ``app`` with ``token`` and describe the scheme in its OpenAPI document."""
    if not token:
        raise CorralError("the API token must not be empty")
    app.add_middleware(BearerAuthMiddleware, token=token)
    app.openapi = _documented(app, app.openapi)  # type: ignore[method-assign]


def _documented(app: FastAPI, build: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["bearer"] = {"type": "http", "scheme": "bearer"}
        schema["security"] = [{"bearer": []}]
        unauthorized = {
            "description": ERROR_MEANINGS[401],
            "content": {"application/json": {"schema": {"$ref": ERROR_BODY_REF}}},
        }
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                if path in OPEN_PATHS:
                    operation["security"] = []
                else:
                    operation.setdefault("responses", {})["401"] = unauthorized
        return schema

    return openapi
