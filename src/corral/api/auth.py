"""Authentication and permission: one ASGI middleware in front of every route.

A request is authenticated by a bearer token (the API token or the read-only token) or by
a dashboard session cookie (``api.access``). Every route, every method, unknown paths and
WebSocket handshakes alike need one, except ``/health`` (a load balancer's probe: it tells
nothing but "up"), the dashboard's log-in page and its stylesheet. The API description
(``/openapi.json``) and ``/metrics`` need credentials too: they list the operations,
versions, engines and node counts of this dispatcher, nobody's business but its users'
(the CLI and Client carry the token anyway; Prometheus sends it with
``authorization: credentials_file``). Without credentials a dashboard page redirects to the
log-in page; anything else gets 401, unknown paths included, so a caller learns nothing,
not even whether a route exists. Tokens are compared in constant time.

Then permission: a read-only principal may only read (GET, HEAD), and a request that
authenticates by cookie and changes something must carry the session's CSRF token in the
``X-CSRF-Token`` header; otherwise 403. The principal goes to the routes in the request's
state (``routes.Caller``), and names the actor of what they do in the audit log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from corral.api import assets
from corral.api.access import CSRF_HEADER, Principal, Sessions, Tokens, csrf_matches
from corral.api.errors import error_response
from corral.api.responses import ERROR_BODY_REF, ERROR_MEANINGS
from corral.errors import Forbidden, Unauthorized

#: routes served without a token; everything else, unknown paths included, needs one
OPEN_PATHS = frozenset({"/health"})
#: the dashboard's log-in page and what it needs
OPEN_UI = frozenset(
    {
        ("GET", "/ui/login"),
        ("HEAD", "/ui/login"),
        ("POST", "/ui/login"),
        ("GET", assets.STYLESHEET),
    }
)
SAFE_METHODS = frozenset({"GET", "HEAD"})
#: the one action a read-only session may take
LOGOUT = "/ui/logout"

_HOW = (
    "send the header 'Authorization: Bearer <token>'; the token is in the server's "
    "home directory (~/.corral/token unless CORRAL_HOME says otherwise), where the corral "
    "CLI and Client find it, or pass it with --token or CORRAL_TOKEN; in a browser, log in "
    "at /ui/login"
)


def is_page(method: str, path: str) -> bool:
    """A dashboard page a browser navigates to (not its data or its assets)."""
    return (
        method in SAFE_METHODS
        and (path == "/ui" or path.startswith("/ui/"))
        and not path.startswith(("/ui/api/", "/ui/static/"))
    )


def principal_of(scope: Scope) -> Principal | None:
    """The principal the middleware found for this request (None on open routes)."""
    found = scope.get("state", {}).get("principal")
    return found if isinstance(found, Principal) else None


class AuthMiddleware:
    """Authenticate every request, then check it is allowed; answer 303, 401 or 403 if not."""

    def __init__(self, app: ASGIApp, tokens: Tokens, sessions: Sessions, cookie: str) -> None:
        self.app = app
        self._tokens = tokens
        self._sessions = sessions
        self._cookie = cookie

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and self._authenticate(scope)[0] is None:
            # no route speaks WebSocket today; one added later is guarded all the same
            await receive()  # the websocket.connect; closing now refuses the handshake
            await send({"type": "websocket.close", "code": 1008, "reason": "unauthorized"})
            return
        if scope["type"] != "http" or self._is_open(scope):
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        principal, problem = self._authenticate(scope)
        if principal is None:
            if is_page(method, path):
                target = "/ui/login?next=" + quote(path, safe="/")
                await RedirectResponse(target, status_code=303)(scope, receive, send)
                return
            await error_response(Unauthorized(f"{problem}: {_HOW}"))(scope, receive, send)
            return
        refusal = _refusal(principal, method, path, _header(scope, CSRF_HEADER.encode()))
        if refusal is not None:
            await error_response(Forbidden(refusal))(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    @staticmethod
    def _is_open(scope: Scope) -> bool:
        path = scope["path"]
        return path in OPEN_PATHS or (scope["method"], path) in OPEN_UI

    def _authenticate(self, scope: Scope) -> tuple[Principal | None, str]:
        address = _address(scope)
        header = _header(scope, b"authorization")
        if header is not None:
            scheme, _, given = header.partition(b" ")
            if scheme.lower() != b"bearer" or not given.strip():
                return None, "the Authorization header is not a bearer token"
            role = self._tokens.role_of(given.strip())
            if role is None:
                return None, "wrong token"
            return Principal(role, address), ""
        cookie = _cookie(scope, self._cookie)
        if cookie is None:
            return None, "missing bearer token"
        session = self._sessions.get(cookie)
        if session is None:
            return None, "the dashboard session has ended (log in again)"
        return Principal(session.role, address, session), ""


def _refusal(principal: Principal, method: str, path: str, csrf: bytes | None) -> str | None:
    if method in SAFE_METHODS:
        return None
    if not principal.can_act and path != LOGOUT:
        return (
            f"the {principal.role.token_name} may only read; {method} {path} needs the API "
            "token (HOME/token)"
        )
    if principal.session is not None and not csrf_matches(principal.session, csrf):
        return (
            f"{method} {path} from a dashboard session needs the session's CSRF token in the "
            "X-CSRF-Token header (the dashboard sends it; reload the page)"
        )
    return None


def _header(scope: Scope, name: bytes) -> bytes | None:
    return next((v for k, v in scope["headers"] if k == name), None)


def _cookie(scope: Scope, name: str) -> str | None:
    for key, value in scope["headers"]:
        if key != b"cookie":
            continue
        for part in bytes(value).decode("latin-1").split(";"):
            found, sep, text = part.strip().partition("=")
            if sep and found == name and text:
                return text
    return None


def _address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "an unknown address"


def install(app: FastAPI, tokens: Tokens, sessions: Sessions, cookie: str) -> None:
    """Guard ``app`` and describe the bearer scheme in its OpenAPI document."""
    app.add_middleware(AuthMiddleware, tokens=tokens, sessions=sessions, cookie=cookie)
    app.openapi = _documented(app, app.openapi)  # type: ignore[method-assign]


def _documented(app: FastAPI, build: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["bearer"] = {"type": "http", "scheme": "bearer"}
        schema["security"] = [{"bearer": []}]

        def error(status: int) -> dict[str, Any]:
            return {
                "description": ERROR_MEANINGS[status],
                "content": {"application/json": {"schema": {"$ref": ERROR_BODY_REF}}},
            }

        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                if path in OPEN_PATHS:
                    operation["security"] = []
                    continue
                answers = operation.setdefault("responses", {})
                answers["401"] = error(401)
                # an action may be forbidden to a read-only caller; a dashboard route to a
                # browser on a foreign Host or Origin (api.browser)
                if method.upper() not in SAFE_METHODS or path.startswith("/ui/"):
                    answers["403"] = error(403)
        return schema

    return openapi
