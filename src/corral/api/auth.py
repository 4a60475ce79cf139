"""Bearer-token authentication, and the token file the server and local clients share.

One ASGI middleware guards every route except ``/health`` and the API description
(``/openapi.json``), which reveal nothing but the shape of the API and are
what a user needs to find out how to authenticate. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from corral.api.errors import error_response
from corral.errors import CorralError, Unauthorized

#: routes served without a token; everything else, unknown paths included, needs one
OPEN_PATHS = frozenset({"/health", "/openapi.json"})

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
        for path, operations in schema.get("paths", {}).items():
            if path in OPEN_PATHS:
                for operation in operations.values():
                    operation["security"] = []
        return schema

    return openapi


def load_or_create_token(path: Path) -> str:
    """Read the token at ``path``, or create one there, private to this user.

    Refuses a token file that group or others may access: anyone who can read it can run
    any command on every node. Creation never leaves a window where the file is readable by
    others or half written: the token goes to a private temporary file that is then
    hard-linked into place (which fails, rather than overwrites, if another process won).
    """
    try:
        return _read_token(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(token + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temporary, path)
    except FileExistsError:
        return _read_token(path)  # another process created it first: use theirs
    finally:
        temporary.unlink(missing_ok=True)
    return token


def _read_token(path: Path) -> str:
    try:
        handle = path.open()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CorralError(f"cannot read the token file {path}: {exc.strerror}") from None
    with handle:
        mode = os.fstat(handle.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise CorralError(
                f"the token file {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
            )
        token = handle.read().strip()
    if not token:
        raise CorralError(f"the token file {path} is empty; delete it to get a new token")
    return token
