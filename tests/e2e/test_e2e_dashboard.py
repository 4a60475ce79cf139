"""The dashboard in a real browser (headless Chromium) against a real ``corral serve``.

An operator logs in, sees a process scheduled through the API appear without reloading,
follows its log, terminates it and drains a node; a read-only session may look but not
act; and nothing answers without a session, nor to another site's page or a rebound host
name. The tests of this module share one dispatcher and run in order: draining the node
comes last.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.timeout(90)

TICKER = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done"
#: live updates must beat the pages' own periodic refresh (5 s and more) by far
LIVE = 4000


@pytest.fixture(scope="module")
def api(served: Any) -> Iterator[httpx.Client]:
    with served.http() as client:
        client.post(
            "/definitions",
            json={
                "definition_id": "ticker",
                "definition_type": "exec",
                "executable": {"exec": "/bin/sh", "argv": ["-c", TICKER]},
            },
        ).raise_for_status()
        yield client


def test_logging_in_shows_the_overview(dashboard: Any) -> None:
    page = dashboard.log_in()
    assert page.url.endswith("/ui/")
    assert page.inner_text("#who").startswith("read-write")
    assert "Processes" in page.inner_text("main")
    page.wait_for_selector("#live.on")  # following /events


def test_a_process_scheduled_through_the_api_appears_live(dashboard: Any, api: Any) -> None:
    page = dashboard.log_in(route="processes")
    page.wait_for_selector("#live.on")
    page.evaluate("window.stillTheSamePage = true")
    assert "live-1" not in page.inner_text("#process-table")
    api.post("/processes/live-1/schedule", json={"definition_id": "ticker"}).raise_for_status()
    row = page.locator("#process-table tr", has_text="live-1")
    row.locator(".s-running").wait_for(timeout=LIVE)
    assert page.evaluate("window.stillTheSamePage") is True  # no reload


def test_the_process_page_follows_its_log_and_terminates_it(
    dashboard: Any, api: Any, served: Any
) -> None:
    api.post("/processes/live-2/schedule", json={"definition_id": "ticker"}).raise_for_status()
    page = dashboard.log_in(route="processes/live-2")
    page.locator("#process-state .s-running").wait_for()
    # (wait_for_function would evaluate a string, which the dashboard's CSP forbids)
    page.locator("#log", has_text="tick 3").wait_for()
    seen = page.inner_text("#log")
    # the log grows while the page stays open
    page.locator("#log", has_text="tick 12").wait_for()
    assert len(page.inner_text("#log")) > len(seen)
    assert page.locator("#history .s-running").count() == 1
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button[data-action=terminate]")
    page.locator("#process-state .s-terminated").wait_for(timeout=LIVE)
    assert api.get("/processes/live-2").json()["state"] == "700-TERMINATED"
    page.locator("#history .s-terminated").wait_for(timeout=LIVE)
    entry = api.get("/audit", params={"target": "live-2"}).json()["entries"][0]
    assert entry["action"] == "terminate_process"
    assert entry["actor"].startswith("ui session ")
    assert entry["actor"].endswith(" of the api token from 127.0.0.1")


def test_a_read_only_session_sees_actions_disabled_and_cannot_forge_one(
    dashboard: Any, api: Any, served: Any
) -> None:
    page = dashboard.log_in(served.readonly_token, route="processes/live-1")
    assert page.inner_text("#who").startswith("read-only")
    assert page.is_disabled("button[data-action=terminate]")
    status = page.evaluate(
        """async () => {
            const session = await (await fetch("/ui/api/session")).json();
            const headers = { "X-CSRF-Token": session.csrf_token };
            return (await fetch("/processes/live-1/terminate", { method: "POST", headers })).status;
        }"""
    )
    assert status == 403
    assert api.get("/processes/live-1").json()["state"] == "500-RUNNING"


def test_without_a_session_the_browser_gets_the_log_in_page_and_no_data(
    dashboard: Any, served: Any
) -> None:
    page = dashboard.anonymous()
    page.goto(f"{served.url}/ui/#/processes")
    assert "/ui/login" in page.url
    assert page.is_visible("#token")
    assert page.request.get(f"{served.url}/ui/api/overview").status == 401
    assert page.request.get(f"{served.url}/processes/live-1").status == 401
    assert page.request.post(f"{served.url}/processes/live-1/terminate").status == 401
    page.fill("#token", "not the token")
    page.click("button[type=submit]")
    assert "not a token of this dispatcher" in page.inner_text("form")


class _Attacker(http.server.BaseHTTPRequestHandler):
    """Another site's page that tries to act with the operator's session."""

    target = ""

    def do_GET(self) -> None:
        page = f"""<!doctype html><script>
            fetch("{self.target}/processes/live-1/terminate",
                  {{ method: "POST", credentials: "include", mode: "no-cors" }})
              .finally(() => document.title = "sent");
        </script>"""
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(page.encode())

    def log_message(self, *args: Any) -> None:
        pass


def test_another_sites_page_cannot_act_with_the_operators_session(
    dashboard: Any, api: Any, served: Any
) -> None:
    page = dashboard.log_in(route="processes")
    # the same host on another port is the same *site* for cookies (SameSite does not
    # help), so the Origin check and the CSRF token are what stop it
    _Attacker.target = served.url
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Attacker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        page.wait_for_function("document.title === 'sent'")
    finally:
        server.shutdown()
        server.server_close()
    assert api.get("/processes/live-1").json()["state"] == "500-RUNNING"


def test_http_level_refusals_on_the_real_server(dashboard: Any, served: Any) -> None:
    page = dashboard.log_in()
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    with httpx.Client(base_url=served.url, cookies=cookies, timeout=10.0) as http_:
        session = http_.get("/ui/api/session").json()
        csrf = {"X-CSRF-Token": session["csrf_token"]}
        assert http_.post("/processes/live-1/restart").status_code == 403  # no CSRF token
        bad = http_.post("/processes/live-1/restart", headers={"X-CSRF-Token": "guess"})
        assert bad.status_code == 403
        rebound = http_.get("/ui/api/overview", headers={"Host": "attacker.example"})
        assert rebound.status_code == 403
        foreign = http_.post(
            "/processes/live-1/restart", headers={**csrf, "Origin": "http://attacker.example"}
        )
        assert foreign.status_code == 403
    with httpx.Client(base_url=served.url, timeout=10.0) as anonymous:
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
            for path in ("/ui/", "/ui/api/overview", "/ui/api/processes", "/ui/logout"):
                response = anonymous.request(method, path)
                assert response.status_code in (303, 401), f"{method} {path}"


def test_draining_a_node_from_its_page(dashboard: Any, api: Any) -> None:
    [node] = [n for n in api.get("/nodes").json() if n["connected"]]
    page = dashboard.log_in(route="nodes")
    page.click(f"#node-table a:text-is('{node['node_id']}')")
    page.wait_for_selector("#node-behaviour")
    assert "live-1" in page.inner_text("#node-processes")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button[data-action=drain]")
    page.locator("#node-behaviour .n-drain").wait_for(timeout=LIVE)
    assert api.get(f"/nodes/{node['node_id']}").json()["idle_behavior"] == "drain"
    entry = api.get("/audit", params={"target": node["node_id"]}).json()["entries"][0]
    assert (entry["action"], entry["detail"]) == ("node_action", {"action": "drain"})
