"""The HTTP API of a real dispatcher over the network: auth, the schema, and bad input.

No input may make the dispatcher answer 500 or stop: each wrong request gets a 4xx whose
JSON body names the field at fault, and the server log shows no unexpected error.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter
from fastapi.routing import APIRoute

from corral.api import routes as route_modules

pytestmark = pytest.mark.timeout(60)

#: the routes the issue asks for: every operation of the Process Dispatcher, and the rest
EXPECTED_ROUTES = {
    ("GET", "/health"),
    ("GET", "/dump"),
    ("GET", "/nodes"),
    ("GET", "/engines"),
    ("GET", "/events"),
    ("POST", "/definitions"),
    ("GET", "/definitions"),
    ("GET", "/definitions/{definition_id}"),
    ("PUT", "/definitions/{definition_id}"),
    ("DELETE", "/definitions/{definition_id}"),
    ("POST", "/processes"),
    ("GET", "/processes"),
    ("POST", "/processes/schedule"),
    ("GET", "/processes/{upid}"),
    ("POST", "/processes/{upid}/schedule"),
    ("POST", "/processes/{upid}/restart"),
    ("POST", "/processes/{upid}/terminate"),
    ("GET", "/processes/{upid}/wait"),
    ("GET", "/processes/{upid}/logs"),
}
OPEN = {"/health"}
HTTP_METHODS = {"get", "post", "put", "delete", "patch"}


def _schema_routes(schema: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method in operations
        if method in HTTP_METHODS
    }


@pytest.fixture(scope="module")
def http(served: Any) -> Iterator[httpx.Client]:
    with served.http() as client:
        yield client


@pytest.fixture(scope="module")
def known(http: httpx.Client) -> str:
    """A definition ``known`` and a finished process ``known-1`` of it."""
    executable = {"exec": "/bin/true", "argv": []}
    body = {"definition_id": "known", "definition_type": "supd", "executable": executable}
    assert http.post("/definitions", json=body).status_code == 200
    scheduled = http.post("/processes/known-1/schedule", json={"definition_id": "known"})
    assert scheduled.status_code == 200, scheduled.text
    done = http.get("/processes/known-1/wait", params={"timeout": 20})
    assert done.json()["state"] == "800-EXITED", done.text
    return "known"


def test_the_openapi_schema_lists_every_route(served: Any) -> None:
    with served.http() as http:
        response = http.get("/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    listed = _schema_routes(schema)
    assert listed >= EXPECTED_ROUTES, sorted(EXPECTED_ROUTES - listed)
    # and every route of every route module (one APIRouter per module of corral.api.routes)
    routes = {
        (method, route.path)
        for info in pkgutil.iter_modules(route_modules.__path__)
        for route in getattr(
            importlib.import_module(f"{route_modules.__name__}.{info.name}"), "router", APIRouter()
        ).routes
        if isinstance(route, APIRoute)
        for method in route.methods - {"HEAD", "OPTIONS"}
    }
    assert len(routes) >= len(EXPECTED_ROUTES)
    assert routes <= listed, sorted(routes - listed)
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_every_route_but_health_needs_the_token(served: Any) -> None:
    with served.http() as http:
        schema = http.get("/openapi.json").json()
    with served.http(token=None) as anonymous:
        assert anonymous.get("/health").json() == {"status": "ok"}
    routes = sorted(_schema_routes(schema) | {("GET", "/no/such/route"), ("GET", "/openapi.json")})
    for token in (None, "wrong-token"):
        with served.http(token=token) as client:
            for method, path in routes:
                if path in OPEN:
                    continue
                concrete = path.replace("{definition_id}", "known").replace("{upid}", "known-1")
                response = client.request(method, concrete, json={} if method != "GET" else None)
                where = f"{method} {path} with token {token!r}"
                assert response.status_code == 401, f"{where}: {response.status_code}"
                error = response.json()["error"]
                assert error["type"] == "Unauthorized", where
                assert "token" in error["message"], where
                assert response.headers.get("www-authenticate", "").lower().startswith("bearer")


def _definition(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "definition_id": "bad-input",
        "definition_type": "supd",
        "executable": {"exec": "/bin/true", "argv": []},
    }
    body.update(changes)
    return body


def _executable(**changes: Any) -> dict[str, Any]:
    return _definition(executable={"exec": "/bin/true", "argv": [], **changes})


def _case(name: str, method: str, path: str, field: str | None, **kwargs: Any) -> Any:
    """One wrong request, and the field its error must name (None: the body as a whole)."""
    return pytest.param(method, path, kwargs, field, id=name)


def _define(name: str, field: str, body: dict[str, Any]) -> Any:
    return _case(name, "POST", "/definitions", field, json=body)


def _schedule(name: str, field: str | None, **body: Any) -> Any:
    """``schedule_process`` of a new upid with ``known`` and ``body``."""
    return _case(
        name, "POST", f"/processes/{name}/schedule", field, json={"definition_id": "known", **body}
    )


def _raw(name: str, path: str, content: bytes, content_type: str = "application/json") -> Any:
    headers = {"content-type": content_type}
    return _case(name, "POST", path, None, content=content, headers=headers)


WAIT = "/processes/known-1/wait"
LOGS = "/processes/known-1/logs"

BAD_INPUTS = [
    _define("unknown-field", "bogus", _definition(bogus=1)),
    _define("unknown-executable-field", "executable.args", _executable(args=["x"])),
    _define("id-not-a-string", "definition_id", _definition(definition_id=5)),
    _define("id-too-long", "definition_id", _definition(definition_id="x" * 300)),
    _define("id-with-slash", "definition_id", _definition(definition_id="a/b")),
    _define("missing-executable", "executable", {"definition_id": "x", "definition_type": "supd"}),
    _define("unknown-definition-type", "definition_type", _definition(definition_type="docker")),
    _define("argv-not-a-list", "executable.argv", _executable(argv="-c true")),
    _define("argv-item-not-a-string", "executable.argv", _executable(argv=[1])),
    _define("exec-empty", "executable.exec", _executable(exec="")),
    _define("exec-not-executable", "executable.exec", _executable(exec="/etc/passwd")),
    _define("exec-missing", "executable.exec", _executable(exec="/no/such/program")),
    _define("exec-a-directory", "executable.exec", _executable(exec="/tmp")),
    _define("env-not-strings", "executable.env", _executable(env={"A": 1})),
    _define("relative-cwd", "executable.working_directory", _executable(working_directory="x")),
    _case(
        "update-other-id",
        "PUT",
        "/definitions/known",
        "definition_id",
        json=_definition(definition_id="other"),
    ),
    _case("update-unknown", "PUT", "/definitions/no-such", "definition_id", json=_definition()),
    _case(
        "create-process-unknown-definition",
        "POST",
        "/processes",
        "definition_id",
        json={"upid": "bad-1", "definition_id": "no-such"},
    ),
    _schedule("schedule-unknown-definition", "definition_id", definition_id="no-such"),
    _case(
        "schedule-without-definition", "POST", "/processes/bad-2/schedule", "definition_id", json={}
    ),
    _schedule("schedule-unknown-engine", "execution_engine_id", execution_engine_id="no-such"),
    _schedule("schedule-unknown-field", "restart", restart="ALWAYS"),
    _schedule("schedule-bogus-restart-mode", "restart_mode", restart_mode="SOMETIMES"),
    _schedule("schedule-queueing-mode-not-a-string", "queueing_mode", queueing_mode=1),
    _schedule("schedule-nested-constraint", "constraints.zone", constraints={"zone": {"a": 1}}),
    _schedule("schedule-configuration-not-an-object", "configuration", configuration=[1, 2]),
    _schedule("schedule-subscribers-not-a-list", "subscribers", subscribers="http://x"),
    _schedule(
        "schedule-bad-restart-policy",
        "configuration.corral.restart.max_attempts",
        configuration={"corral": {"restart": {"max_attempts": "x"}}},
    ),
    _case(
        "schedule-configuration-nan",
        "POST",
        "/processes/bad-3/schedule",
        "configuration",
        content=b'{"definition_id": "known", "configuration": {"x": NaN}}',
        headers={"content-type": "application/json"},
    ),
    _case(
        "schedule-batch-item",
        "POST",
        "/processes/schedule",
        "definition_id",
        json={"processes": [{"upid": "bad-4", "definition_id": "no-such"}]},
    ),
    _case("schedule-body-not-an-object", "POST", "/processes/bad-5/schedule", None, json=[1]),
    _raw("body-not-json", "/definitions", b"this is not json"),
    _raw("body-not-utf8", "/definitions", b"\xff\xfe\x00{"),
    _raw("body-text-plain", "/processes/bad-6/schedule", b"definition_id=known", "text/plain"),
    _case("body-missing", "POST", "/definitions", None),
    _case("wait-bogus-state", "GET", WAIT, "state", params={"state": "BOGUS", "timeout": 1}),
    _case("wait-negative-timeout", "GET", WAIT, "timeout", params={"timeout": -1}),
    _case("wait-timeout-not-a-number", "GET", WAIT, "timeout", params={"timeout": "soon"}),
    _case("wait-timeout-nan", "GET", WAIT, "timeout", params={"timeout": "nan"}),
    _case("logs-bogus-stream", "GET", LOGS, "stream", params={"stream": "stdin"}),
    _case("logs-negative-offset", "GET", LOGS, "offset", params={"offset": -1}),
    _case("logs-zero-limit", "GET", LOGS, "limit", params={"limit": 0}),
    _case("describe-unknown-process", "GET", "/processes/no-such", "upid"),
    _case("wait-unknown-process", "GET", "/processes/no-such/wait", "upid"),
    _case("describe-unknown-definition", "GET", "/definitions/no-such", "definition_id"),
    _case("remove-unknown-definition", "DELETE", "/definitions/no-such", "definition_id"),
    _case("wrong-method", "PATCH", "/processes", None, json={}),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "field"), BAD_INPUTS)
def test_wrong_input_gets_a_4xx_naming_the_field(
    http: httpx.Client,
    known: str,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    field: str | None,
) -> None:
    response = http.request(method, path, **kwargs)
    assert 400 <= response.status_code < 500, f"{response.status_code}: {response.text}"
    assert response.headers["content-type"].startswith("application/json"), response.text
    error = response.json()["error"]
    assert error["message"], error
    assert error["type"] != "CorralError", error
    if field is not None:
        named = f"{error.get('field')} {error['message']}"
        assert field in named, f"the error does not name {field!r}: {error}"


def test_no_input_made_the_dispatcher_fail(served: Any, http: httpx.Client, known: str) -> None:
    # runs after the bad inputs in this module: the dispatcher is up and logged nothing odd
    assert served.proc.poll() is None
    assert http.get("/health").json() == {"status": "ok"}
    assert http.get(f"/definitions/{known}").status_code == 200
    log = served.log_tail(100_000)
    assert "Traceback" not in log, log
    assert "unexpected error" not in log, log


def test_schedule_is_idempotent_and_refuses_other_parameters(http: httpx.Client) -> None:
    # a process that runs until stopped: a finished one would be scheduled again, by design
    executable = {"exec": "/bin/sleep", "argv": ["600"]}
    definition = {"definition_id": "idem", "definition_type": "exec", "executable": executable}
    assert http.post("/definitions", json=definition).status_code == 200
    body = {"definition_id": "idem", "restart_mode": "NEVER", "constraints": {"engine": "default"}}
    first = http.post("/processes/same-1/schedule", json=body)
    assert first.status_code == 200, first.text
    again = http.post("/processes/same-1/schedule", json=body)
    assert again.status_code == 200, again.text
    assert again.json()["round"] == first.json()["round"]
    other = http.post("/processes/same-1/schedule", json={**body, "restart_mode": "ALWAYS"})
    assert other.status_code == 409, other.text
    assert other.json()["error"]["message"]
    assert http.post("/processes/same-1/terminate").status_code == 200
