"""``/ui``: the operators' dashboard: its page, log-in and log-out, and its static files.

The dashboard is plain HTML, CSS and JavaScript modules shipped inside the package
(``corral/api/ui``, served from memory by ``api.assets``): no build step, nothing fetched
from elsewhere. One page (``/ui/``) holds the whole dashboard; it reads the JSON routes
(``routes.dashboard`` and the API's own) with the session cookie, and follows ``/events``
for live updates. The log-in page is rendered here, without scripts, and opens a session
(``api.access``) for either token.
"""

from __future__ import annotations

import html
import logging
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from corral.api import assets
from corral.api.access import Principal, Sessions, Tokens
from corral.api.routes import Caller, Service
from corral.errors import InvalidRequest, NotFound

log = logging.getLogger("corral.api")

router = APIRouter(prefix="/ui", include_in_schema=False)

#: a log-in form is a token and a path: anything longer is not one
MAX_FORM = 4096


@router.get("/")
@router.get("")
async def index() -> HTMLResponse:
    return HTMLResponse(assets.INDEX)


@router.get("/static/{version}/{name:path}")
async def asset(version: str, name: str) -> Response:
    found = assets.FILES.get(name)
    if found is None or version != assets.VERSION:
        raise NotFound(f"no dashboard file {name!r} in version {version!r}")
    headers = {"Cache-Control": assets.CACHE_FOREVER}
    return Response(found.body, media_type=found.media_type, headers=headers)


@router.get("/login")
async def login_page(next: str = "/ui/") -> HTMLResponse:
    return _login_page(_safe_next(next))


@router.post("/login")
async def login(request: Request, service: Service) -> Response:
    """Check the token and open a session; back to the page on a wrong token."""
    form = await _form(request)
    target = _safe_next(form.get("next", "/ui/"))
    tokens: Tokens = request.app.state.tokens
    role = tokens.role_of(form.get("token", "").strip().encode())
    address = request.client.host if request.client else "an unknown address"
    if role is None:
        log.warning("dashboard log-in with a wrong token from %s", address)
        return _login_page(target, "That is not a token of this dispatcher.", status=401)
    sessions: Sessions = request.app.state.sessions
    cookie, session = sessions.open(role, address)
    await service.views.record(Principal(role, address, session).actor, "login", "dashboard")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        request.app.state.cookie,
        cookie,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
async def logout(request: Request, service: Service, caller: Caller) -> Response:
    """End the caller's session (the dashboard sends its CSRF token, as for any action)."""
    response = JSONResponse({"logged_out": caller.session is not None})
    if caller.session is not None:
        sessions: Sessions = request.app.state.sessions
        cookie = request.cookies.get(request.app.state.cookie, "")
        sessions.close(cookie)
        await service.views.record(caller.actor, "logout", "dashboard")
        response.delete_cookie(request.app.state.cookie, path="/", samesite="strict")
    return response


async def _form(request: Request) -> dict[str, str]:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise InvalidRequest("send the log-in form as application/x-www-form-urlencoded")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise InvalidRequest(f"the log-in form is longer than {MAX_FORM} bytes")
    try:
        fields = parse_qs(body.decode(), max_num_fields=4)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(f"the log-in form could not be read: {exc}") from None
    return {name: values[0] for name, values in fields.items()}


def _safe_next(target: str) -> str:
    """Only a dashboard path: a log-in must never send the browser elsewhere."""
    if target.startswith("/ui") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/"


def _login_page(target: str, message: str = "", status: int = 200) -> HTMLResponse:
    page = assets.LOGIN.replace("{{next}}", html.escape(target, quote=True))
    shown = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
    return HTMLResponse(page.replace("{{message}}", shown), status_code=status)
