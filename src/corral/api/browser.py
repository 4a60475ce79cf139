"""Browser-facing requests: the Host and Origin checks, and the dashboard's security headers.

A page on another site must not drive the dashboard through the operator's browser. The
session cookie is SameSite=Strict, actions need a CSRF token, and this middleware, in front
of authentication, refuses (403) a browser-facing request — one for ``/ui``, one carrying
the session cookie, or one with an ``Origin`` header —

- whose ``Host`` is not a name of this dispatcher: an IP address (which no DNS answer can
  rebind), ``localhost``, or a name given with ``corral serve --ui-host``; so a site whose
  name an attacker re-points at 127.0.0.1 (DNS rebinding) reaches nothing;
- whose ``Origin``, when present, is not this same host: a page of another origin cannot
  make its requests count as the dashboard's.

Dashboard responses also carry a strict Content-Security-Policy (scripts, styles and data
from the dispatcher only: the dashboard fetches nothing from elsewhere), forbid framing,
send a referrer to the dispatcher only (``no-referrer`` would make the browser send
``Origin: null`` with the log-in form, which the Origin check refuses) and are not cached,
but for the versioned files, which say so themselves.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.api.errors import error_response
from corral.errors import Forbidden

UI_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


def host_name(host: str) -> str:
    """The name part of a Host header value: ``[::1]:7480`` → ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    name, sep, port = host.rpartition(":")
    return name if sep and port.isdigit() else host


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class BrowserGuard:
    """Refuse browser-facing requests with a foreign Host or Origin; add the UI's headers."""

    def __init__(self, app: ASGIApp, names: Iterable[str], cookie: str) -> None:
        self.app = app
        self._names = {"localhost", *(name.lower() for name in names)}
        self._cookie = cookie.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        ui = path == "/ui" or path.startswith("/ui/")
        headers = scope["headers"]
        host = _header(headers, b"host")
        origin = _header(headers, b"origin")
        if ui or origin is not None or self._has_cookie(headers):
            problem = self._problem(host, origin)
            if problem is not None:
                await error_response(Forbidden(problem))(scope, receive, send)
                return
        if not ui:
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                cached = any(k.lower() == b"cache-control" for k, _ in headers)
                # a response that says how to cache it (a versioned file) keeps its say
                headers += [h for h in UI_HEADERS if not (cached and h[0] == b"cache-control")]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)

    def _has_cookie(self, headers: list[tuple[bytes, bytes]]) -> bool:
        return any(k == b"cookie" and self._cookie in v for k, v in headers)

    def _problem(self, host: str | None, origin: str | None) -> str | None:
        if host is None:
            return "the request has no Host header"
        name = host_name(host)
        if not (is_ip(name) or name in self._names):
            return (
                f"Host {host!r} is not a name of this dispatcher (a DNS rebinding attempt?); "
                "use its IP address or localhost, or start it with --ui-host NAME"
            )
        if origin is None:
            return None
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or parts.netloc.lower() != host.lower():
            return f"Origin {origin!r} is not this dispatcher ({host}); refusing a foreign page"
        return None


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    value = next((v for k, v in headers if k == name), None)
    return None if value is None else value.decode("latin-1")
