"""Every route of the app needs the token, with every method, allowed or not; only the
health check answers without one.

The routes come from the app's own routing table, not from a list kept by hand, so a route
added later is covered the day it is added.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from test_api_fake_service import TOKEN, FakeService

from corral.api import create_app
from corral.api.auth import OPEN_PATHS

pytestmark = pytest.mark.anyio

#: every method a client may send, and one no server knows
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "BREW")
BAD_CREDENTIALS: list[dict[str, str] | None] = [
    None,
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": f"Bearer {TOKEN}x"},
]

APP = create_app(FakeService(), TOKEN)


def routing_table(app: Any) -> dict[str, frozenset[str]]:
    """Each route's path template and the methods it allows, from the app's routing table."""
    try:  # FastAPI ≥ 0.135 keeps included routers whole; this walks into them
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI flattens them into app.routes
        contexts: Any = app.routes
    else:
        contexts = iter_route_contexts(app.routes)
    table: dict[str, frozenset[str]] = {}
    for route in contexts:
        assert route.path, f"a route of an unexpected kind: {route!r}"
        assert route.methods, f"a route of an unexpected kind: {route!r}"
        table[route.path] = table.get(route.path, frozenset()) | frozenset(route.methods)
    return table


def concrete(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", template)


def allowed(path: str) -> frozenset[str]:
    """The methods some route serves at ``path`` (/processes/schedule is also a {upid})."""
    methods: frozenset[str] = frozenset()
    for template, more in TABLE.items():
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path):
            methods |= more
    return methods


TABLE = routing_table(APP)
ROUTES = {concrete(template): methods for template, methods in TABLE.items()}


def test_the_routing_table_holds_every_operation_and_the_schema() -> None:
    # guards the enumeration itself: were the table empty, every test below would pass
    assert len(ROUTES) >= 18
    assert {"/health", "/openapi.json", "/metrics", "/events", "/processes/x/wait"} <= set(ROUTES)
    assert sorted(OPEN_PATHS) == ["/health"]


@pytest.mark.parametrize("headers", BAD_CREDENTIALS)
async def test_every_route_and_every_method_answers_401_without_the_right_token(
    headers: dict[str, str] | None,
) -> None:
    transport = httpx.ASGITransport(app=APP)
    unguarded = []
    async with httpx.AsyncClient(transport=transport, base_url="http://corral.test") as http:
        for path in [*ROUTES, "/no/such/route"]:
            if path in OPEN_PATHS:
                continue
            for method in METHODS:
                response = await http.request(method, path, headers=headers, json={})
                if response.status_code != 401 or response.headers["www-authenticate"] != "Bearer":
                    unguarded.append(f"{method} {path}: {response.status_code}")
    assert not unguarded


async def test_with_the_token_the_methods_a_route_does_not_allow_are_405() -> None:
    transport = httpx.ASGITransport(app=APP)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://corral.test") as http:
        for path in ROUTES:
            for method in sorted(set(METHODS) - allowed(path)):
                response = await http.request(method, path, headers=auth)
                assert response.status_code == 405, f"{method} {path}"


async def test_only_the_health_check_answers_without_a_token_and_only_to_its_methods() -> None:
    transport = httpx.ASGITransport(app=APP)
    async with httpx.AsyncClient(transport=transport, base_url="http://corral.test") as http:
        for method in METHODS:
            response = await http.request(method, "/health")
            expected = 200 if method in ROUTES["/health"] else 405
            assert response.status_code == expected, method
        assert (await http.get("/health")).json() == {"status": "ok"}


@pytest.mark.parametrize("path", ["/events", "/health", "/anything"])
async def test_a_websocket_handshake_without_the_token_is_refused(path: str) -> None:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": path, "headers": [], "query_string": b""}
    await APP(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "unauthorized"}]


def _schema_paths(schema: dict[str, Any]) -> set[str]:
    return {concrete(path) for path in schema["paths"]}


async def test_every_route_but_the_schema_itself_is_documented() -> None:
    # a route missing from the schema would escape the schemathesis run
    transport = httpx.ASGITransport(app=APP)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://corral.test") as http:
        schema = (await http.get("/openapi.json", headers=auth)).json()
    assert set(ROUTES) - _schema_paths(schema) == {"/openapi.json"}
