"""Errors to HTTP responses: the only place in corral where that mapping lives.

Every error leaves as ``{"error": {"type", "message", "field"?}}`` with one status:

====================  ======
``InvalidRequest``    422
``NotFound``          404
``Conflict``          409
``Unauthorized``      401
``WaitTimeout``       408
``Unavailable``       503
``StoreFull``         507
other ``CorralError`` 500, with its message
anything else         500, a generic message; the traceback goes to the log only
====================  ======

Request validation errors (pydantic, bad JSON, a body that is not JSON) become
``InvalidRequest`` whose message and ``field`` name the path at fault, so no input can
produce a 500 through validation. ``corral.client`` turns the body back into the class.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.errors import (
    Conflict,
    CorralError,
    InvalidRequest,
    NotFound,
    StoreFull,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)

log = logging.getLogger("corral.api")

STATUS: dict[type[CorralError], int] = {
    InvalidRequest: 422,
    NotFound: 404,
    Conflict: 409,
    Unauthorized: 401,
    WaitTimeout: 408,
    Unavailable: 503,
    StoreFull: 507,
}
#: a validation failure lists at most this many problems, so a huge bad body stays short
MAX_PROBLEMS = 5
_SOURCES = ("body", "query", "path", "header", "cookie")


def status_for(exc: CorralError) -> int:
    """The status of ``exc``, looked up along its MRO so subclasses map like their base."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(exc: CorralError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    return JSONResponse({"error": exc.as_dict()}, status_code=status_for(exc), headers=headers)


def internal_error(exc: BaseException, where: str) -> CorralError:
    """Log an unexpected exception with its traceback and return what the caller may see."""
    log.error("unexpected error in %s", where, exc_info=exc)
    return CorralError("internal error in the dispatcher; the server log has the details")


def validation_error(errors: Sequence[Any]) -> InvalidRequest:
    """One ``InvalidRequest`` naming each field at fault (the first one is ``field``)."""
    problems = [_describe(err) for err in errors[:MAX_PROBLEMS]]
    if not problems:
        return InvalidRequest("the request is invalid")
    message = "; ".join(text for _, text in problems)
    if len(errors) > MAX_PROBLEMS:
        message += f"; and {len(errors) - MAX_PROBLEMS} more"
    return InvalidRequest(message, field=problems[0][0])


def _describe(err: Any) -> tuple[str | None, str]:
    """``(field, sentence)`` for one pydantic/FastAPI error entry."""
    err = err if isinstance(err, Mapping) else {}
    loc = tuple(err.get("loc", ()))
    kind = err.get("type", "")
    # a validator's ValueError arrives as "Value error, <its message>"; the prefix says nothing
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if loc and loc[0] in _SOURCES:
        source, path = loc[0], ".".join(str(part) for part in loc[1:])
    else:
        source, path = "body", ".".join(str(part) for part in loc)
    if kind == "json_invalid":
        detail = (err.get("ctx") or {}).get("error", msg)
        where = f" at position {loc[1]}" if len(loc) > 1 else ""
        return None, f"the request body is not valid JSON: {detail}{where}"
    if source == "body" and not path:
        return None, _describe_whole_body(kind, msg, err.get("input"))
    if kind == "missing":
        return path, f"{path}: field required"
    if kind == "extra_forbidden":
        return path, f"{path}: unknown field (extra fields are not permitted)"
    return path, f"{path}: {msg}"


def _describe_whole_body(kind: str, msg: str, given: Any) -> str:
    if kind == "missing":
        return "the request body is missing: send a JSON object"
    if isinstance(given, bytes | bytearray):
        # FastAPI hands the raw bytes on when the Content-Type is not JSON
        return "the request body is not JSON: send a JSON object as application/json"
    return f"the request body must be a JSON object: {msg}"


async def _on_corral_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CorralError)
    return error_response(exc)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(validation_error(exc.errors()))


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    # Starlette's own errors (no route, wrong method, an unparsable body) get our body shape.
    assert isinstance(exc, HTTPException)
    detail = str(exc.detail)
    if exc.status_code == 404:
        return error_response(NotFound(f"no such route: {request.method} {request.url.path}"))
    if exc.status_code == 400:
        # a body FastAPI could not even decode (not UTF-8, nested too deep): still a bad request
        return error_response(InvalidRequest(f"the request body could not be read: {detail}"))
    body = {"error": {"type": _type_for_status(exc.status_code), "message": detail}}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


def _type_for_status(status: int) -> str:
    for cls, code in STATUS.items():
        if code == status:
            return cls.__name__
    return InvalidRequest.__name__ if 400 <= status < 500 else CorralError.__name__


class CatchAllMiddleware:
    """Turn any exception that escaped the handlers into a generic 500, logged once.

    Starlette's own last-resort handler re-raises after answering (so servers log twice and
    in-process test transports raise); this one answers and stops.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            error = internal_error(exc, f"{scope.get('method')} {scope.get('path')}")
            if started:
                # headers are out; nothing truthful can be sent, so end the stream here
                return
            await error_response(error)(scope, receive, send)


def install(app: FastAPI) -> None:
    """Register the handlers and, outermost of our middleware, the catch-all."""
    app.add_exception_handler(CorralError, _on_corral_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_exception)
    app.add_middleware(CatchAllMiddleware)
