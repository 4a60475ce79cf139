"""The HTTP layer's own behaviour, in-process over ``httpx.ASGITransport`` (no socket).

Auth, the error-to-status mapping, 422s that name the field, long-poll timeouts, SSE
framing and the OpenAPI document, against the fake service in ``test_api_fake_service``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
from test_api_fake_service import TOKEN, FakeService, event

from corral.api import create_app
from corral.errors import CorralError, Unavailable

pytestmark = pytest.mark.anyio

AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXECUTABLE = {"exec": "/bin/echo", "argv": ["hello"]}
DEFINITION = {"definition_id": "echo", "definition_type": "supd", "executable": EXECUTABLE}


def client(
    service: FakeService, headers: dict[str, Any] | None = AUTH, **app: Any
) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(service, TOKEN, **app))
    return httpx.AsyncClient(transport=transport, base_url="http://corral.test", headers=headers)


async def make_process(http: httpx.AsyncClient, upid: str = "p1") -> dict[str, Any]:
    assert (await http.post("/definitions", json=DEFINITION)).status_code == 200
    response = await http.post(f"/processes/{upid}/schedule", json={"definition_id": "echo"})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def error_of(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


# -- auth ----------------------------------------------------------------------------------


async def test_health_answers_without_a_token() -> None:
    async with client(FakeService(), headers=None) as http:
        response = await http.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        (None, "missing bearer token"),
        ({"Authorization": "Bearer not-the-token"}, "wrong token"),
        ({"Authorization": f"Basic {TOKEN}"}, "not a bearer token"),
        ({"Authorization": "Bearer"}, "not a bearer token"),
        ({"Authorization": "Bearer t\u00e9st".encode()}, "wrong token"),
    ],
)
async def test_a_request_without_the_right_token_gets_401_saying_how_to_pass_it(
    headers: dict[str, Any] | None, problem: str
) -> None:
    async with client(FakeService(), headers=headers) as http:
        response = await http.get("/processes")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    error = error_of(response)
    assert error["type"] == "Unauthorized"
    assert problem in error["message"]
    assert "Authorization: Bearer <token>" in error["message"]


async def test_unknown_paths_need_a_token_too_then_are_404() -> None:
    async with client(FakeService(), headers=None) as http:
        assert (await http.get("/no/such/thing")).status_code == 401
    async with client(FakeService()) as http:
        response = await http.get("/no/such/thing")
    assert response.status_code == 404
    assert error_of(response) == {
        "type": "NotFound",
        "message": "no such route: GET /no/such/thing",
    }


async def test_a_wrong_method_keeps_the_error_body_shape() -> None:
    async with client(FakeService()) as http:
        response = await http.delete("/processes")
    assert response.status_code == 405
    assert error_of(response)["type"] == "InvalidRequest"


def test_an_empty_token_is_refused() -> None:
    with pytest.raises(CorralError, match="must not be empty"):
        create_app(FakeService(), "")


# -- OpenAPI -------------------------------------------------------------------------------

ROUTES = {
    "/health": {"get"},
    "/definitions": {"get", "post"},
    "/definitions/{definition_id}": {"get", "put", "delete"},
    "/processes": {"get", "post"},
    "/processes/{upid}": {"get"},
    "/processes/{upid}/schedule": {"post"},
    "/processes/{upid}/restart": {"post"},
    "/processes/{upid}/terminate": {"post"},
    "/processes/{upid}/wait": {"get"},
    "/processes/{upid}/logs": {"get"},
    "/dump": {"get"},
    "/nodes": {"get"},
    "/metrics": {"get"},
    "/nodes/{node_id}": {"get"},
    "/nodes/{node_id}/{action}": {"post"},
    "/engines": {"get"},
    "/events": {"get"},
    "/processes/schedule": {"post"},
    "/processes/{upid}/history": {"get"},
    "/audit": {"get"},
    "/ui/api/session": {"get"},
    "/ui/api/overview": {"get"},
    "/ui/api/processes": {"get"},
    "/ui/api/computations": {"get"},
    "/ui/api/pipelines": {"get"},
}


async def test_openapi_is_served_with_the_token_and_lists_every_route() -> None:
    async with client(FakeService(), headers=None) as http:
        assert (await http.get("/openapi.json")).status_code == 401
    async with client(FakeService()) as http:
        schema = (await http.get("/openapi.json")).json()
    assert {path: set(ops) for path, ops in schema["paths"].items()} == ROUTES
    assert schema["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert schema["security"] == [{"bearer": []}]
    assert schema["paths"]["/health"]["get"]["security"] == []
    assert schema["paths"]["/processes/{upid}/schedule"]["post"]["summary"] == "schedule_process"


async def test_openapi_describes_every_answer_and_every_error_body() -> None:
    async with client(FakeService()) as http:
        schema = (await http.get("/openapi.json")).json()
    assert "HTTPValidationError" not in json.dumps(schema)  # FastAPI's shape, not ours
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            where = f"{method.upper()} {path}"
            assert ("401" in responses) == (path != "/health"), where
            for status, answer in responses.items():
                if int(status) >= 400:
                    body = answer["content"]["application/json"]["schema"]
                    assert body == {"$ref": "#/components/schemas/ErrorBody"}, where
    process = schema["paths"]["/processes/{upid}"]["get"]["responses"]["200"]
    assert process["content"]["application/json"]["schema"]["$ref"].endswith("/ProcessOut")


# -- definitions and processes ---------------------------------------------------------------


async def test_definition_crud_round_trips() -> None:
    async with client(FakeService()) as http:
        created = (await http.post("/definitions", json=DEFINITION)).json()
        assert created["executable"] == {**EXECUTABLE, "env": {}, "working_directory": None}
        assert (await http.get("/definitions")).json() == [created]
        assert (await http.get("/definitions/echo")).json() == created
        changed = {**DEFINITION, "executable": {"exec": "/bin/true"}, "name": "t"}
        updated = await http.put("/definitions/echo", json=changed)
        assert updated.json()["name"] == "t"
        removed = await http.delete("/definitions/echo")
        assert removed.status_code == 204
        assert removed.content == b""
        missing = await http.get("/definitions/echo")
    assert missing.status_code == 404
    assert error_of(missing) == {
        "type": "NotFound",
        "message": "no definition 'echo'",
        "field": "definition_id",
    }


async def test_service_errors_map_to_their_statuses() -> None:
    async with client(FakeService()) as http:
        await make_process(http)
        other = {**DEFINITION, "executable": {"exec": "/bin/false"}}
        conflict = await http.post("/definitions", json=other)
        in_use = await http.delete("/definitions/echo")
        relative = await http.post("/definitions", json={**other, "executable": {"exec": "x"}})
        unknown = {"definition_id": "echo", "execution_engine_id": "nope"}
        engine = await http.post("/processes/p2/schedule", json=unknown)
    assert (conflict.status_code, error_of(conflict)["type"]) == (409, "Conflict")
    assert (in_use.status_code, error_of(in_use)["type"]) == (409, "Conflict")
    assert relative.status_code == 422
    assert error_of(relative)["field"] == "executable.exec"
    assert (engine.status_code, error_of(engine)["field"]) == (404, "execution_engine_id")


async def test_an_update_body_may_repeat_the_id_but_not_change_it() -> None:
    async with client(FakeService()) as http:
        await http.post("/definitions", json=DEFINITION)
        same = await http.put("/definitions/echo", json=DEFINITION)
        other = await http.put("/definitions/echo", json={**DEFINITION, "definition_id": "x"})
    assert same.status_code == 200
    assert other.status_code == 422
    assert error_of(other)["field"] == "definition_id"


async def test_schedule_passes_every_seed_parameter_to_the_service() -> None:
    fake = FakeService()
    body = {
        "definition_id": "echo",
        "configuration": {"a": {"b": [1, 2]}},
        "subscribers": ["http://hook"],
        "constraints": {"zone": "a", "gpu": ["x", "y"], "cpus": 2},
        "queueing_mode": "START_ONLY",
        "restart_mode": "NEVER",
        "execution_engine_id": "default",
        "node_exclusive": "db",
        "name": "my echo",
        "request_id": "call-1",
    }
    async with client(fake) as http:
        await http.post("/definitions", json=DEFINITION)
        response = await http.post("/processes/p1/schedule", json=body)
    assert response.status_code == 200
    process = response.json()
    assert {key: process[key] for key in body} == body


async def test_create_describe_restart_terminate_a_process() -> None:
    async with client(FakeService()) as http:
        await http.post("/definitions", json=DEFINITION)
        created = await http.post("/processes", json={"upid": "p1", "definition_id": "echo"})
        assert created.json()["state"] == "100-UNSCHEDULED"
        assert (await http.get("/processes/p1")).json()["upid"] == "p1"
        assert [p["upid"] for p in (await http.get("/processes")).json()] == ["p1"]
        assert (await http.post("/processes/p1/restart")).json()["round"] == 1
        assert (await http.post("/processes/p1/terminate")).json()["state"] == "700-TERMINATED"


async def test_dump_nodes_and_engines() -> None:
    async with client(FakeService()) as http:
        assert (await http.get("/dump")).json() == {"definitions": 0, "processes": 0}
        assert (await http.get("/nodes")).json()[0]["node_id"] == "node-1"
        assert (await http.get("/engines")).json()[0]["engine_id"] == "default"


# -- waits and logs ------------------------------------------------------------------------


async def test_wait_answers_once_the_state_is_reached() -> None:
    async with client(FakeService()) as http:
        await make_process(http)
        response = await http.get("/processes/p1/wait", params={"state": ["RUNNING"], "timeout": 1})
    assert response.status_code == 200
    assert response.json()["state"] == "500-RUNNING"


async def test_a_wait_that_runs_out_of_time_is_408() -> None:
    fake = FakeService()
    async with client(fake) as http:
        await make_process(http)
        fake.set_state("p1", "300-WAITING")
        params: dict[str, str | float] = {"state": "RUNNING", "timeout": 0.02}
        response = await http.get("/processes/p1/wait", params=params)
    assert response.status_code == 408
    assert error_of(response)["type"] == "WaitTimeout"


async def test_a_long_wait_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeService()
    seen: list[float] = []

    async def wait_process(upid: str, states: list[str] | None, limit: float) -> dict[str, Any]:
        seen.append(limit)
        return {"upid": upid}

    monkeypatch.setattr(fake, "wait_process", wait_process)
    async with client(fake) as http:
        await http.get("/processes/p1/wait", params={"timeout": 1e9})
        bad = await http.get("/processes/p1/wait", params={"timeout": -1})
        nan = await http.get("/processes/p1/wait", params={"timeout": "nan"})
    assert seen == [300.0]
    assert (bad.status_code, error_of(bad)["field"]) == (422, "timeout")
    assert (nan.status_code, error_of(nan)["field"]) == (422, "timeout")


async def test_logs_are_read_by_offset_and_stream() -> None:
    fake = FakeService()
    async with client(fake) as http:
        await make_process(http)
        fake.logs["p1", "stderr"] = "0123456789"
        params: dict[str, str | int] = {"stream": "stderr", "offset": 3, "limit": 4}
        chunk = (await http.get("/processes/p1/logs", params=params)).json()
        bad = await http.get("/processes/p1/logs", params={"stream": "stdin"})
        huge = await http.get("/processes/p1/logs", params={"limit": 1 << 30})
    assert (chunk["data"], chunk["next_offset"], chunk["size"]) == ("3456", 7, 10)
    assert error_of(bad)["field"] == "stream"
    assert "stdout" in error_of(bad)["message"]
    assert error_of(huge)["field"] == "limit"


# -- unexpected errors ---------------------------------------------------------------------


async def test_an_unexpected_exception_is_a_generic_500_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with client(FakeService()) as http:
        with caplog.at_level(logging.ERROR, logger="corral.api"):
            response = await http.get("/processes/boom")
    assert response.status_code == 500
    assert error_of(response) == {
        "type": "CorralError",
        "message": "internal error in the dispatcher; the server log has the details",
    }
    assert "secret internal detail" not in response.text
    assert "Traceback" not in response.text
    assert "secret internal detail" in caplog.text


async def test_a_corral_error_without_a_status_is_500_with_its_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeService()

    def dump() -> dict[str, Any]:
        raise CorralError("the store is closed")

    monkeypatch.setattr(fake, "dump", dump)
    async with client(fake) as http:
        response = await http.get("/dump")
    assert response.status_code == 500
    assert error_of(response) == {"type": "CorralError", "message": "the store is closed"}


# -- events --------------------------------------------------------------------------------


def frames(text: str) -> list[str]:
    return [frame for frame in text.split("\n\n") if frame]


async def test_events_are_one_data_frame_each() -> None:
    fake = FakeService()
    fake.queued_events = [
        event("p1", "400-PENDING", "350-ASSIGNED"),
        event("p1", "500-RUNNING", "400-PENDING"),
    ]
    async with client(fake) as http:
        response = await http.get("/events")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    sent = frames(response.text)
    assert sent[0] == ": subscribed"
    assert [json.loads(frame.removeprefix("data: ")) for frame in sent[1:]] == fake.queued_events


async def test_a_quiet_stream_sends_keep_alive_comments() -> None:
    fake = FakeService()
    fake.queued_events = [event("p1", "500-RUNNING", "400-PENDING")]
    fake.event_delay = 0.2
    async with client(fake, sse_keepalive=0.02) as http:
        response = await http.get("/events")
    sent = frames(response.text)
    assert sent[:2] == [": subscribed", ": keep-alive"]
    assert sent[-1].startswith("data: ")
    assert set(sent[1:-1]) == {": keep-alive"}


async def test_an_error_while_streaming_is_an_error_event() -> None:
    fake = FakeService()
    fake.queued_events = [event("p1", "500-RUNNING", "400-PENDING")]
    fake.event_error = Unavailable("the dispatcher is shutting down")
    async with client(fake) as http:
        response = await http.get("/events")
    last = frames(response.text)[-1]
    assert last.startswith("event: error\ndata: ")
    body = json.loads(last.partition("data: ")[2])
    assert body == {"error": {"type": "Unavailable", "message": "the dispatcher is shutting down"}}


async def test_an_unexpected_error_while_streaming_says_nothing_internal() -> None:
    fake = FakeService()
    fake.event_error = RuntimeError("secret internal detail")
    async with client(fake) as http:
        response = await http.get("/events")
    assert "secret" not in response.text
    assert frames(response.text)[-1].startswith("event: error\n")


async def test_events_of_an_unknown_process_are_404_before_the_stream_starts() -> None:
    async with client(FakeService()) as http:
        response = await http.get("/events", params={"upid": "nope"})
    assert response.status_code == 404
    assert error_of(response)["field"] == "upid"


async def test_node_actions_reach_the_service_and_unknown_actions_are_refused() -> None:
    async with client(FakeService()) as http:
        held = await http.post("/nodes/node-1/hold")
        assert held.json()["idle_behavior"] == "hold"
        assert (await http.get("/nodes/node-1")).json()["idle_behavior"] == "hold"
        missing = await http.post("/nodes/nope/drain")
        bad = await http.post("/nodes/node-1/explode")
    assert missing.status_code == 404
    assert error_of(missing)["field"] == "node_id"
    assert bad.status_code == 422
    assert "action" in error_of(bad)["message"]


async def test_metrics_are_text_and_need_the_token() -> None:
    async with client(FakeService()) as http:
        scraped = await http.get("/metrics")
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "corral_queue_length 0.0" in scraped.text
    async with client(FakeService(), headers=None) as anonymous:
        assert (await anonymous.get("/metrics")).status_code == 401
