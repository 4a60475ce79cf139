"""Dashboard sessions and their safety, in-process: log-in, roles, CSRF, Host and Origin.

Every request here goes through the real middleware stack of ``create_app`` over the fake
service; the browser's part (cookies, the Origin header) is played by httpx.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from test_api_fake_service import TOKEN, FakeService

from corral.api import assets, create_app
from corral.api.access import Sessions
from corral.api.auth import OPEN_PATHS, OPEN_UI
from corral.api.redact import HIDDEN
from corral.api.routes import dashboard, ui

pytestmark = pytest.mark.anyio

READONLY = "read-only-token-456"
URL = "http://127.0.0.1:7480"
EXECUTABLE = {"exec": "/bin/echo", "argv": [], "env": {"DB_PASSWORD": "hunter2"}}
DEFINITION = {"definition_id": "echo", "definition_type": "supd", "executable": EXECUTABLE}


def app(service: FakeService, **options: Any) -> Any:
    return create_app(service, TOKEN, readonly_token=READONLY, **options)


def browser(service: FakeService, base_url: str = URL, **options: Any) -> httpx.AsyncClient:
    """A client with a cookie jar and no bearer token, as a browser is."""
    transport = httpx.ASGITransport(app=app(service, **options))
    return httpx.AsyncClient(transport=transport, base_url=base_url)


async def log_in(http: httpx.AsyncClient, token: str = TOKEN) -> dict[str, Any]:
    response = await http.post(
        "/ui/login", data={"token": token, "next": "/ui/"}, headers={"Origin": URL}
    )
    assert response.status_code == 303, response.text
    session: dict[str, Any] = (await http.get("/ui/api/session")).json()
    return session


async def with_process(service: FakeService) -> None:
    await service.create_definition("echo", "supd", EXECUTABLE)
    await service.schedule_process("p1", "echo", configuration={"compute": {"secret": "s3"}})


# -- logging in ------------------------------------------------------------------------------


async def test_logging_in_sets_an_httponly_samesite_strict_cookie_and_redirects() -> None:
    service = FakeService()
    async with browser(service) as http:
        response = await http.post(
            "/ui/login", data={"token": TOKEN, "next": "/ui/"}, headers={"Origin": URL}
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/ui/"
        cookie = response.headers["set-cookie"].lower()
        assert "httponly" in cookie
        assert "samesite=strict" in cookie
        assert "path=/" in cookie
        assert "secure" not in cookie  # plain HTTP: a Secure cookie would never come back
        session = (await http.get("/ui/api/session")).json()
    assert session["role"] == "read-write"
    assert session["can_act"] is True
    assert session["csrf_token"]
    assert session["actor"].startswith("ui session ")
    assert session["actor"].endswith("of the api token from 127.0.0.1")
    assert service.views.recorded == [(session["actor"], "login", "dashboard")]


async def test_over_tls_the_cookie_is_secure() -> None:
    async with browser(FakeService(), base_url="https://127.0.0.1:7443") as http:
        response = await http.post(
            "/ui/login", data={"token": TOKEN}, headers={"Origin": "https://127.0.0.1:7443"}
        )
    assert "secure" in response.headers["set-cookie"].lower()


async def test_a_wrong_token_shows_the_log_in_page_again_without_a_cookie() -> None:
    async with browser(FakeService()) as http:
        response = await http.post("/ui/login", data={"token": "nope"})
    assert response.status_code == 401
    assert "not a token of this dispatcher" in response.text
    assert "set-cookie" not in response.headers


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/elsewhere"])
async def test_a_log_in_never_redirects_out_of_the_dashboard(target: str) -> None:
    async with browser(FakeService()) as http:
        response = await http.post("/ui/login", data={"token": TOKEN, "next": target})
    assert response.headers["location"] == "/ui/"


async def test_the_log_in_page_escapes_what_it_is_given() -> None:
    async with browser(FakeService()) as http:
        page = await http.get("/ui/login", params={"next": '/ui/"><script>alert(1)</script>'})
    assert page.status_code == 200
    assert "<script>alert" not in page.text


async def test_a_session_ends_when_idle_and_at_log_out() -> None:
    now = [0.0]
    service = FakeService()
    application = app(service, sessions=Sessions(idle_timeout=60, clock=lambda: now[0]))
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url=URL) as http:
        session = await log_in(http)
        now[0] = 59.0
        assert (await http.get("/ui/api/overview")).status_code == 200
        now[0] = 118.0  # each request starts the idle time again
        assert (await http.get("/ui/api/overview")).status_code == 200
        now[0] = 179.0
        assert (await http.get("/ui/api/overview")).status_code == 401
        session = await log_in(http)
        headers = {"X-CSRF-Token": session["csrf_token"]}
        assert (await http.post("/ui/logout", headers=headers)).json() == {"logged_out": True}
        assert (await http.get("/ui/api/overview")).status_code == 401
    assert [action for _, action, _ in service.views.recorded] == ["login", "login", "logout"]


# -- every route needs authentication ----------------------------------------------------------


def ui_routes() -> list[tuple[str, str]]:
    routes = []
    for route in ui.router.routes + dashboard.router.routes:
        if isinstance(route, APIRoute) and route.path.startswith("/ui"):
            path = route.path.replace("{version}/{name:path}", f"{assets.VERSION}/app.js")
            routes += [(method, path) for method in route.methods - {"HEAD"}]
    return sorted(routes)


async def test_without_a_session_every_ui_route_and_method_is_refused() -> None:
    routes = ui_routes()
    assert ("POST", "/ui/logout") in routes
    assert ("GET", "/ui/api/processes") in routes
    async with browser(FakeService()) as http:
        for path in sorted({p for _, p in routes} | {"/ui/no/such/page"}):
            for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
                if (method, path) in OPEN_UI:
                    continue
                response = await http.request(method, path)
                where = f"{method} {path}"
                if method == "GET" and not path.startswith(("/ui/api/", "/ui/static/")):
                    assert response.status_code == 303, where  # a page: to the log-in
                    assert response.headers["location"].startswith("/ui/login?next="), where
                else:
                    assert response.status_code == 401, where
                    assert response.json()["error"]["type"] == "Unauthorized", where


async def test_only_the_log_in_page_and_its_stylesheet_open_without_a_session() -> None:
    stylesheet = f"/ui/static/{assets.VERSION}/app.css"
    assert {path for _, path in OPEN_UI} == {"/ui/login", stylesheet}
    assert {"/health"} == OPEN_PATHS
    async with browser(FakeService()) as http:
        login = await http.get("/ui/login")
        assert login.status_code == 200
        assert f'href="{stylesheet}"' in login.text
        assert (await http.get(stylesheet)).status_code == 200


async def test_an_unknown_session_cookie_opens_nothing() -> None:
    service = FakeService()
    cookie = app(service).state.cookie
    async with browser(service) as http:
        http.cookies.set(cookie, "forged-session-id")
        response = await http.get("/ui/api/overview")
    assert response.status_code == 401
    assert "session has ended" in response.json()["error"]["message"]


# -- CSRF and roles ----------------------------------------------------------------------------


async def test_an_action_by_cookie_needs_the_sessions_csrf_token() -> None:
    service = FakeService()
    await with_process(service)
    async with browser(service) as http:
        session = await log_in(http)
        missing = await http.post("/processes/p1/terminate")
        wrong = await http.post("/processes/p1/terminate", headers={"X-CSRF-Token": "guess"})
        assert missing.status_code == wrong.status_code == 403
        assert "CSRF" in missing.json()["error"]["message"]
        assert service.processes["p1"]["state"] == "500-RUNNING"
        right = await http.post(
            "/processes/p1/terminate", headers={"X-CSRF-Token": session["csrf_token"]}
        )
    assert right.status_code == 200
    assert service.processes["p1"]["state"] == "700-TERMINATED"
    assert service.actors[-1] == session["actor"]


async def test_a_read_only_session_may_look_but_not_act() -> None:
    service = FakeService()
    await with_process(service)
    async with browser(service) as http:
        session = await log_in(http, READONLY)
        assert session["role"] == "read-only"
        assert session["can_act"] is False
        headers = {"X-CSRF-Token": session["csrf_token"]}
        assert (await http.get("/processes/p1")).status_code == 200
        for path in ("/processes/p1/terminate", "/processes/p1/restart", "/nodes/node-1/drain"):
            response = await http.post(path, headers=headers)
            assert response.status_code == 403, path
            assert "may only read" in response.json()["error"]["message"]
        # the one thing it may post: its own log-out
        assert (await http.post("/ui/logout", headers=headers)).status_code == 200
    assert service.processes["p1"]["state"] == "500-RUNNING"


async def test_the_read_only_token_sees_secrets_masked() -> None:
    service = FakeService()
    await with_process(service)
    bearer = {"Authorization": f"Bearer {READONLY}"}
    transport = httpx.ASGITransport(app=app(service))
    async with httpx.AsyncClient(transport=transport, base_url=URL, headers=bearer) as http:
        process = (await http.get("/processes/p1")).json()
        listed = (await http.get("/processes")).json()
        definition = (await http.get("/definitions/echo")).json()
        refused = await http.post("/processes/p1/terminate")
    assert process["configuration"] == {"compute": {"secret": HIDDEN}}
    assert listed[0]["configuration"] == {"compute": {"secret": HIDDEN}}
    assert definition["executable"]["env"] == {"DB_PASSWORD": HIDDEN}
    assert refused.status_code == 403
    # the API token sees the documents as they are
    transport = httpx.ASGITransport(app=app(service))
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=transport, base_url=URL, headers=bearer) as http:
        assert (await http.get("/processes/p1")).json()["configuration"]["compute"]["secret"]


async def test_actions_by_bearer_token_are_attributed_to_the_token() -> None:
    service = FakeService()
    await with_process(service)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    transport = httpx.ASGITransport(app=app(service))
    async with httpx.AsyncClient(transport=transport, base_url=URL, headers=bearer) as http:
        assert (await http.post("/nodes/node-1/drain")).status_code == 200
    assert service.actors[-1] == "api token from 127.0.0.1"


# -- Host and Origin ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["127.0.0.1:7480", "[::1]:7480", "localhost:7480", "10.1.2.3", "dash.example:443"]
)
async def test_the_dashboard_answers_its_own_names(host: str) -> None:
    async with browser(FakeService(), ui_hosts=["dash.example"]) as http:
        response = await http.get("/ui/login", headers={"Host": host})
    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/ui/login", "/ui/", "/ui/api/overview"])
async def test_a_foreign_host_is_refused_as_dns_rebinding(path: str) -> None:
    async with browser(FakeService()) as http:
        await log_in(http)
        response = await http.get(path, headers={"Host": "attacker.example:7480"})
    assert response.status_code == 403
    assert "DNS rebinding" in response.json()["error"]["message"]


async def test_the_session_cookie_is_refused_under_a_foreign_host_on_api_routes_too() -> None:
    async with browser(FakeService()) as http:
        await log_in(http)
        response = await http.get("/processes", headers={"Host": "attacker.example"})
    assert response.status_code == 403


@pytest.mark.parametrize("origin", ["http://attacker.example", "null", "http://127.0.0.1:9999"])
async def test_a_foreign_origin_is_refused(origin: str) -> None:
    service = FakeService()
    await with_process(service)
    async with browser(service) as http:
        session = await log_in(http)
        headers = {"Origin": origin, "X-CSRF-Token": session["csrf_token"]}
        action = await http.post("/processes/p1/terminate", headers=headers)
        login = await http.post("/ui/login", data={"token": TOKEN}, headers={"Origin": origin})
    assert action.status_code == login.status_code == 403
    assert "Origin" in action.json()["error"]["message"]
    assert service.processes["p1"]["state"] == "500-RUNNING"


async def test_a_foreign_origin_is_refused_with_a_bearer_token_too() -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}", "Origin": "http://attacker.example"}
    transport = httpx.ASGITransport(app=app(FakeService()))
    async with httpx.AsyncClient(transport=transport, base_url=URL, headers=bearer) as http:
        assert (await http.get("/processes")).status_code == 403


async def test_api_clients_keep_working_under_any_host_name() -> None:
    # the CLI and Client send no Origin and no cookie: the Host check is for browsers
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    transport = httpx.ASGITransport(app=app(FakeService()))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://corral.internal:7480", headers=bearer
    ) as http:
        assert (await http.get("/processes")).status_code == 200


async def test_dashboard_responses_carry_a_strict_content_security_policy() -> None:
    async with browser(FakeService()) as http:
        await log_in(http)
        page = await http.get("/ui/")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"


# -- the data routes ---------------------------------------------------------------------------


async def test_the_processes_route_passes_filters_and_refuses_bad_ones() -> None:
    service = FakeService()
    await with_process(service)
    async with browser(service) as http:
        await log_in(http)
        page = await http.get(
            "/ui/api/processes",
            params={"state": "500-RUNNING", "q": "p", "sort": "upid", "order": "asc"},
        )
        bad_sort = await http.get("/ui/api/processes", params={"sort": "bogus"})
        bad_limit = await http.get("/ui/api/processes", params={"limit": 100_000})
    assert page.status_code == 200
    assert page.json()["total"] == 1
    assert service.views.calls[-1]["states"] == ["500-RUNNING"]
    assert service.views.calls[-1]["text"] == "p"
    assert bad_sort.status_code == bad_limit.status_code == 422
    assert bad_sort.json()["error"]["field"] == "sort"
    assert bad_limit.json()["error"]["field"] == "limit"


async def test_static_files_are_served_from_the_package_only_and_kept_by_version() -> None:
    static = f"/ui/static/{assets.VERSION}"
    async with browser(FakeService()) as http:
        await log_in(http)
        page = await http.get("/ui/")
        script = await http.get(f"{static}/app.js")
        escape = await http.get(f"{static}/../../errors.py")
        missing = await http.get(f"{static}/nope.js")
        stale = await http.get("/ui/static/0123456789ab/app.js")
    assert f'src="{static}/app.js"' in page.text
    assert page.headers["cache-control"] == "no-store"
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.headers["cache-control"] == assets.CACHE_FOREVER
    assert escape.status_code == 404
    assert missing.status_code == stale.status_code == 404
