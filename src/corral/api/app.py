"""``create_app``: the FastAPI application over a :class:`DispatcherService`.

The app is assembled from the route modules, the one error mapping (``api.errors``), the
one auth middleware (``api.auth``), the browser guard (``api.browser``) and the standby's
answer (``api.standby``). Middleware order, outermost first: the catch-all that turns an
unexpected exception into a logged, generic 500; then the Host and Origin checks of
browser-facing requests, so a rebound or foreign page learns nothing; then authentication
and permission, so a request without credentials learns nothing, not even whether a route
exists; then the standby's 503; then FastAPI.
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import Depends, FastAPI

from corral import __version__
from corral.api import auth, errors, responses, standby
from corral.api._service import DispatcherService
from corral.api.access import Sessions, Tokens, cookie_name
from corral.api.browser import BrowserGuard
from corral.api.routes import (
    audit,
    dashboard,
    definitions,
    events,
    one_value_each,
    processes,
    system,
    ui,
)
from corral.api.standby import RoleView


def create_app(
    service: DispatcherService | None,
    token: str,
    *,
    readonly_token: str | None = None,
    ui_hosts: Iterable[str] = (),
    title: str = "corral",
    sse_keepalive: float = 15.0,
    sessions: Sessions | None = None,
    role: RoleView | None = None,
) -> FastAPI:
    """Build the HTTP API over ``service``, guarded by the bearer ``token``.

    Only ``/health`` and the dashboard's log-in page answer without credentials (see
    ``api.auth``). ``readonly_token`` opens the API for reading only. ``ui_hosts`` are the
    names (besides IP addresses and localhost) a browser may reach the dashboard by.
    ``sse_keepalive`` is the quiet period, in seconds, after which ``/events`` sends a
    keep-alive comment. ``sessions`` keeps the dashboard's sessions (by default for an hour
    without a request, twelve at most). With a ``role`` (one of several dispatchers of a
    store), ``app.state.role`` and ``app.state.service`` may be replaced while the app runs;
    the service may be None only while the role is not active.
    """
    app = FastAPI(
        title=title,
        version=__version__,
        description="corral process dispatcher API (EPU Process Dispatcher operations)",
        openapi_url="/openapi.json",
        # FastAPI's /docs page loads its scripts from a CDN, which a dispatcher on a
        # closed network cannot reach: serve the schema only.
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(one_value_each)],
    )
    tokens = Tokens(token, readonly_token)
    app.state.service = service
    app.state.sse_keepalive = sse_keepalive
    app.state.tokens = tokens
    app.state.sessions = sessions = Sessions() if sessions is None else sessions
    app.state.cookie = cookie = cookie_name(token)
    app.state.role = role
    for module in (system, definitions, processes, events, audit, dashboard, ui):
        app.include_router(module.router)
    # added in this order so the catch-all ends up outermost (Starlette wraps the last added)
    standby.install(app)
    auth.install(app, tokens, sessions, cookie)
    app.add_middleware(BrowserGuard, names=tuple(ui_hosts), cookie=cookie)
    errors.install(app)
    responses.install(app)
    return app
