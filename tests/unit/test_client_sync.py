"""``corral.Client`` against the real app (over the fake service), in-process.

Every operation round-trips, errors come back as the same ``corral.errors`` classes with
their message and field, and the long poll and event stream behave.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio.from_thread
import httpx
import pytest
from test_api_fake_service import BASE_URL, TOKEN, FakeService, PortalTransport, event

from corral import Client, Conflict, CorralError, InvalidRequest, NotFound, Unauthorized
from corral.api import create_app
from corral.client import _requests
from corral.errors import Unavailable, WaitTimeout

EXECUTABLE = {"exec": "/bin/echo", "argv": ["hi"]}


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # discovery must not find the developer's own ~/.corral or environment
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path))
    monkeypatch.delenv("CORRAL_URL", raising=False)
    monkeypatch.delenv("CORRAL_TOKEN", raising=False)


@pytest.fixture
def fake() -> FakeService:
    return FakeService()


@pytest.fixture
def client(fake: FakeService, portal: anyio.from_thread.BlockingPortal) -> Iterator[Client]:
    transport = PortalTransport(create_app(fake, TOKEN), portal)
    with Client(BASE_URL, TOKEN, transport=transport) as made:
        yield made


@pytest.fixture
def portal() -> Iterator[anyio.from_thread.BlockingPortal]:
    with anyio.from_thread.start_blocking_portal() as started:
        yield started


def test_definitions_round_trip(client: Client) -> None:
    created = client.create_definition("echo", "supd", EXECUTABLE, name="Echo")
    assert created["name"] == "Echo"
    assert client.describe_definition("echo") == created
    assert client.list_definitions() == [created]
    updated = client.update_definition("echo", "exec", {"exec": "/bin/true"}, description="d")
    assert (updated["definition_type"], updated["description"]) == ("exec", "d")
    client.remove_definition("echo")
    assert client.list_definitions() == []


def test_processes_round_trip(client: Client, fake: FakeService) -> None:
    client.create_definition("echo", "supd", EXECUTABLE)
    assert client.create_process("p1", "echo", name="one")["state"] == "100-UNSCHEDULED"
    scheduled = client.schedule_process(
        "p1", "echo", constraints={"zone": "a"}, queueing_mode="NEVER", node_exclusive="x"
    )
    assert (scheduled["constraints"], scheduled["queueing_mode"]) == ({"zone": "a"}, "NEVER")
    assert client.describe_process("p1")["state"] == "500-RUNNING"
    assert [p["upid"] for p in client.describe_processes()] == ["p1"]
    assert client.wait_process("p1", ["RUNNING"], timeout=1)["state"] == "500-RUNNING"
    assert client.restart_process("p1")["round"] == 1
    assert client.terminate_process("p1")["state"] == "700-TERMINATED"
    fake.logs["p1", "stdout"] = "hello\n"
    chunk = client.read_log("p1")
    assert (chunk["data"], chunk["next_offset"]) == ("hello\n", 6)
    assert client.read_log("p1", offset=6)["data"] == ""


def test_dump_nodes_engines_health(client: Client) -> None:
    assert client.dump() == {"definitions": 0, "processes": 0}
    assert client.list_nodes()[0]["hostname"] == "alpha"
    assert client.list_engines()[0]["engine_id"] == "default"
    assert client.health() == {"status": "ok"}


def test_a_409_becomes_conflict_with_its_message(client: Client) -> None:
    client.create_definition("echo", "supd", EXECUTABLE)
    with pytest.raises(Conflict) as caught:
        client.create_definition("echo", "supd", {"exec": "/bin/false"})
    assert caught.value.message == "definition echo exists with other parameters"


def test_a_404_becomes_not_found_with_its_field(client: Client) -> None:
    with pytest.raises(NotFound) as caught:
        client.describe_process("ghost")
    assert (caught.value.message, caught.value.field) == ("no process 'ghost'", "upid")


def test_a_422_becomes_invalid_request_naming_the_field(client: Client) -> None:
    with pytest.raises(InvalidRequest) as caught:
        client.create_definition("echo", "supd", {"exec": "/bin/echo", "argv": [1]})
    assert caught.value.field == "executable.argv.0"


def test_a_500_becomes_the_root_error(client: Client) -> None:
    with pytest.raises(CorralError) as caught:
        client.describe_process("boom")
    assert type(caught.value) is CorralError
    assert "internal error" in caught.value.message


def test_a_wrong_token_is_unauthorized(fake: FakeService, portal: Any) -> None:
    transport = PortalTransport(create_app(fake, TOKEN), portal)
    with Client(BASE_URL, "wrong", transport=transport) as client, pytest.raises(Unauthorized):
        client.list_definitions()


def test_events_are_decoded_from_the_stream(client: Client, fake: FakeService) -> None:
    client.create_definition("echo", "supd", EXECUTABLE)
    client.schedule_process("p1", "echo")
    fake.queued_events = [event("p1", "400-PENDING", "350-ASSIGNED"), event("p2", "x", "y")]
    assert list(client.events("p1")) == fake.queued_events[:1]
    assert len(list(client.events())) == 2


def test_an_error_event_raises_its_class(client: Client, fake: FakeService) -> None:
    fake.queued_events = [event("p1", "400-PENDING", "350-ASSIGNED")]
    fake.event_error = Unavailable("shutting down")
    seen: list[dict[str, Any]] = []
    with pytest.raises(Unavailable, match="shutting down"):
        seen.extend(client.events())
    assert seen == fake.queued_events


def test_events_of_an_unknown_process_raise_not_found(client: Client) -> None:
    with pytest.raises(NotFound):
        next(client.events("ghost"))


# -- behaviour that needs a scripted server ------------------------------------------------


def scripted(handler: Any, token: str | None = TOKEN) -> Client:
    return Client(BASE_URL, token, transport=httpx.MockTransport(handler))


def test_wait_process_polls_in_chunks_until_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_requests, "WAIT_CHUNK", 0.01)
    asked: list[httpx.QueryParams] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params)
        body = {"error": {"type": "WaitTimeout", "message": "still waiting"}}
        return httpx.Response(408, json=body)

    with scripted(handler) as client, pytest.raises(WaitTimeout) as caught:
        client.wait_process("p1", ["RUNNING", "EXITED"], timeout=0.05)
    assert caught.value.message == "process p1 did not reach RUNNING or EXITED within 0.05s"
    assert len(asked) > 1
    assert asked[0].get_list("state") == ["RUNNING", "EXITED"]
    assert all(float(params["timeout"]) <= 0.01 for params in asked)


def test_wait_process_returns_as_soon_as_a_chunk_answers() -> None:
    answers = iter([httpx.Response(408, json={"error": {"type": "WaitTimeout", "message": "-"}}),
                    httpx.Response(200, json={"upid": "p1", "state": "800-EXITED"})])  # fmt: skip
    with scripted(lambda request: next(answers)) as client:
        assert client.wait_process("p1", timeout=120)["state"] == "800-EXITED"


def test_connection_refused_is_unavailable_naming_the_url_and_corral_serve() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with scripted(handler) as client, pytest.raises(Unavailable) as caught:
        client.list_nodes()
    assert BASE_URL in caught.value.message
    assert "corral serve" in caught.value.message


@pytest.mark.parametrize(
    ("url", "error", "said"),
    [
        (
            "https://h:1",
            httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"),
            "--ca FILE or CORRAL_CA",
        ),
        (
            "http://h:1",
            httpx.RemoteProtocolError("Server disconnected without sending a response."),
            "use its https:// URL",
        ),
        (
            "https://h:1",
            httpx.ConnectError("[SSL: WRONG_VERSION_NUMBER] wrong version number"),
            "does not speak TLS",
        ),
    ],
    ids=["untrusted", "http-to-tls", "tls-to-http"],
)
def test_a_tls_mismatch_says_what_to_change(url: str, error: Exception, said: str) -> None:
    assert isinstance(error, httpx.TransportError)
    message = _requests.unavailable(url, error).message
    assert said in message
    assert url in message


def test_an_answer_that_is_not_our_error_body_still_maps_by_status() -> None:
    proxy = scripted(lambda request: httpx.Response(503, text="<html>bad gateway</html>"))
    with proxy as client, pytest.raises(Unavailable, match="HTTP 503"):
        client.dump()


def test_a_401_without_any_token_says_where_the_client_looked() -> None:
    body = {"error": {"type": "Unauthorized", "message": "missing bearer token"}}
    server = scripted(lambda request: httpx.Response(401, json=body), token=None)
    with server as client, pytest.raises(Unauthorized, match="this client found no token"):
        client.dump()


def test_requests_carry_the_token_quote_ids_and_omit_unset_parameters() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    with scripted(handler) as client:
        client.schedule_process("a b/c", "d", restart_mode="NEVER")
    request = seen[0]
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.url.raw_path == b"/processes/a%20b%2Fc/schedule"
    assert json.loads(request.content) == {"definition_id": "d", "restart_mode": "NEVER"}
