"""``create_app``: the FastAPI application over a :class:`DispatcherService`.

The app is assembled from the route modules, the one error mapping (``api.errors``) and the
one auth middleware (``api.auth``). Middleware order, outermost first: the catch-all that
turns an unexpected exception into a logged, generic 500; then bearer auth, so a request
without a token learns nothing, not even whether a route exists; then the standby's 503
(``api.standby``); then FastAPI.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI

from corral import __version__
from corral.api import auth, errors, responses, standby
from corral.api._service import DispatcherService
from corral.api.routes import definitions, events, one_value_each, processes, system
from corral.api.standby import RoleView


def create_app(
    service: DispatcherService | None,
    token: str,
    *,
    title: str = "corral",
    sse_keepalive: float = 15.0,
    role: RoleView | None = None,
) -> FastAPI:
    """Build the HTTP API over ``service``, guarded by the bearer ``token``.

    Only ``/health`` answers without a token (see ``api.auth``). ``sse_keepalive`` is the
    quiet period, in seconds, after which ``/events`` sends a keep-alive comment. With a
    ``role`` (one of several dispatchers of a store), ``app.state.role`` and
    ``app.state.service`` may be replaced while the app runs; the service may be None only
    while the role is not active.
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
    app.state.service = service
    app.state.sse_keepalive = sse_keepalive
    app.state.role = role
    for module in (system, definitions, processes, events):
        app.include_router(module.router)
    # added in this order so the catch-all ends up outermost (Starlette wraps the last added)
    standby.install(app)
    auth.install(app, token)
    errors.install(app)
    responses.install(app)
    return app
