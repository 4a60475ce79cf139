"""Hostile HTTP input: schemathesis over the dispatcher's own OpenAPI schema.

What it injects: at least 2,000 requests generated from the schema that the dispatcher
serves at ``/openapi.json``, in three passes over every operation:

- *free*: schema-valid requests with whatever ids and strings Hypothesis makes up;
- *aimed*: schema-valid requests whose ids name what exists (definitions, processes,
  nodes) and whose executables exist, so the paths that change state run too;
- *negative*: requests that break the schema (wrong types, missing or unknown fields,
  repeated parameters), each of which must get a 4xx.

What it asserts: no 5xx; every status is one the operation documents, with the documented
content type and a body that matches the documented schema (errors included); every 422
names the field at fault unless the body as a whole is; the dispatcher is still whole
afterwards. Schema-valid requests may still be refused with a 422 (an executable that does
not exist on this machine, a state name that is no state): the schema cannot say that,
so schemathesis's "valid data is accepted" check is not run.

The dispatcher is the real one (store on SQLite, mapper, hub, syncer) with nodes from the
fake driver, so no process starts on this machine; requests go in process through ASGI on
the dispatcher's own event loop. The bearer token is sent with every request and is not
part of the generation: ``tests/unit/test_api_token_everywhere.py`` covers it.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import corral.api.routes.processes as process_routes
from corral.api import create_app
from corral.config import parse_config
from corral.dispatcher.runtime import Runtime, RuntimeSettings

pytestmark = pytest.mark.timeout(300)

T = TypeVar("T")

TOKEN = "fuzz-api-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BASE_URL = "http://corral.test"
#: generated requests per operation and pass, at most: 22 operations × 3 passes × 60 = 3,960;
#: operations with few possible inputs (GET /dump takes nothing) run out before that
EXAMPLES = 60
LEAST = 2000

CONFIG = {
    "engines": [
        {
            "id": "default",
            "driver": "fake",
            "slots": 4,
            "base_need": 1,
            "maximum_vms": 3,
            "heartbeat_period": 0.2,
            "heartbeat_warning": 1.0,
            "heartbeat_missing": 2.0,
            "terminate_grace": 0.2,
        },
        {"id": "other", "driver": "fake", "slots": 2, "base_need": 0, "maximum_vms": 1},
    ]
}
POSITIVE_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
NEGATIVE_CHECKS = [*POSITIVE_CHECKS, negative_data_rejection]
EXECUTABLES = ["/bin/true", "/bin/sh", "/bin/sleep"]


class InProcess:
    """The real dispatcher on an event loop of its own thread, and its app, called through
    ``httpx.ASGITransport`` on that loop (no socket)."""

    def __init__(self, home: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        settings = RuntimeSettings(home, parse_config(copy.deepcopy(CONFIG)), "fuzz-agents")
        self.runtime = Runtime(settings)
        dispatcher = self.on_loop(self.runtime.start())
        self.app = create_app(dispatcher, TOKEN)
        transport = httpx.ASGITransport(app=_ending_streams(self.app))
        self.http = httpx.AsyncClient(transport=transport, base_url=BASE_URL, timeout=30)

    def on_loop(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def send(self, request: httpx.Request) -> httpx.Response:
        return self.on_loop(self.http.send(request))

    def get(self, path: str) -> Any:
        response = self.send(self.http.build_request("GET", path, headers=AUTH))
        assert response.status_code == 200, response.text
        return response.json()

    def close(self) -> None:
        self.on_loop(self.http.aclose())
        self.on_loop(self.runtime.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def _ending_streams(app: Any) -> Any:
    """The app, but a streamed answer (``/events`` never ends) ends after its first chunk,
    and the app is told the client left; ASGITransport reads whole answers only."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        ended = asyncio.Event()

        async def receive_until_ended() -> Any:
            if ended.is_set():
                return {"type": "http.disconnect"}
            return await receive()

        async def send_until_ended(message: Any) -> None:
            if ended.is_set():
                return
            if message["type"] == "http.response.body" and message.get("more_body"):
                ended.set()
                message = {**message, "more_body": False}
            await send(message)

        await app(scope, receive_until_ended, send_until_ended)

    return wrapped


@dataclass
class Known:
    """Ids that exist, for the aimed pass."""

    definitions: list[str] = field(default_factory=list)
    upids: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)

    def refresh(self, dispatcher: InProcess) -> None:
        self.definitions = [d["definition_id"] for d in dispatcher.get("/definitions")][:50]
        self.upids = [p["upid"] for p in dispatcher.get("/processes")][:50]
        self.nodes = [n["node_id"] for n in dispatcher.get("/nodes")]


def _pick(pool: list[str], choice: int, fallback: str) -> str:
    return pool[choice % len(pool)] if pool else fallback


def _aim_body(body: Any, known: Known, choice: int) -> Any:
    """Point the ids of a schema-valid body at things that exist, most of the time."""
    if not isinstance(body, dict):
        return body
    if choice % 5 == 0:
        return body  # now and then, leave it as generated
    if "definition_id" in body:
        body["definition_id"] = _pick(known.definitions, choice, "known")
    if isinstance(body.get("executable"), dict):
        body["executable"]["exec"] = EXECUTABLES[choice % len(EXECUTABLES)]
        body["executable"].pop("working_directory", None)
    if "upid" in body and choice % 3 == 0:
        body["upid"] = _pick(known.upids, choice, "known-1")
    if body.get("execution_engine_id") is not None:
        body["execution_engine_id"] = ("default", "other")[choice % 2]
    for item in body.get("processes") or []:
        _aim_body(item, known, choice // 7 + 1)
    return body


def _aim(case: Any, known: Known, choice: int) -> Any:
    params = case.path_parameters or {}
    pools = {
        "definition_id": known.definitions,
        "upid": known.upids,
        "node_id": known.nodes,
    }
    for name, pool in pools.items():
        if name in params and pool:
            # path parameters travel percent-encoded (schemathesis encodes what it makes)
            params[name] = quote(_pick(pool, choice, params[name]), safe="")
    if "action" in params:
        # kill retires a node: rarely, so the pool keeps nodes to act on
        params["action"] = ("hold", "drain", "run", "run", "kill")[choice % 5]
    if isinstance(case.query, dict) and "upid" in case.query and known.upids:
        case.query["upid"] = _pick(known.upids, choice, "known-1")
    case.body = _aim_body(case.body, known, choice)
    return case


def _names_the_field(response: httpx.Response) -> str | None:
    """Why a 422 does not name the field at fault, or None when it does (or needs not)."""
    if response.status_code != 422:
        return None
    error = response.json()["error"]
    if error.get("field") or error["message"].startswith("the request body"):
        return None
    return f"a 422 that names no field: {error['message']}"


@dataclass
class Tally:
    requests: int = 0
    by_pass: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def _run_pass(
    dispatcher: InProcess,
    schema: Any,
    name: str,
    strategy_of: Callable[[Any], Any],
    checks: list[Any],
    tally: Tally,
) -> None:
    for result in schema.get_all_operations():
        operation = result.ok()
        where = f"{name}: {operation.method.upper()} {operation.path}"
        counted = 0

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(strategy_of(operation))
        def probe(case: Any) -> None:
            nonlocal counted
            kwargs = case.as_transport_kwargs(base_url=BASE_URL, headers=AUTH)
            body = kwargs.get("data")
            if "json" in kwargs:
                body = json.dumps(kwargs["json"]).encode()
            request = dispatcher.http.build_request(
                kwargs["method"],
                kwargs["url"],
                params=kwargs.get("params"),
                headers=kwargs["headers"],
                content=body,
            )
            response = dispatcher.send(request)
            counted += 1
            tally.statuses[response.status_code] = tally.statuses.get(response.status_code, 0) + 1
            case.validate_response(response, checks=checks, headers=kwargs["headers"])
            problem = _names_the_field(response)
            assert problem is None, f"{problem}\n{case.as_curl_command(headers=AUTH)}"

        try:
            probe()
        except Unsatisfiable:
            pass  # no request can break the schema of an operation that takes nothing
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis's FailureGroup is the latter
            tally.failures.append(f"{where}:\n{exc}")
        tally.requests += counted
        tally.by_pass[name] = tally.by_pass.get(name, 0) + counted


def _without_security(document: dict[str, Any]) -> dict[str, Any]:
    """The served schema minus its security scheme: the token is sent with every request,
    so schemathesis must not count leaving it out as a way to break the schema."""
    document = copy.deepcopy(document)
    document.pop("security", None)
    document.get("components", {}).pop("securitySchemes", None)
    for operations in document["paths"].values():
        for operation in operations.values():
            operation.pop("security", None)
    return document


@pytest.fixture(scope="module")
def dispatcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    patch = pytest.MonkeyPatch()
    # a long poll of a process that never ends would hold a generated request for minutes
    patch.setattr(process_routes, "MAX_WAIT", 0.05)
    running = InProcess(tmp_path_factory.mktemp("fuzz") / "home")
    try:
        yield running
    finally:
        running.close()
        patch.undo()


def _seed(dispatcher: InProcess) -> None:
    """A definition, processes of it in several states, and a node to aim at."""
    definition = {
        "definition_id": "known",
        "definition_type": "supd",
        "executable": {"exec": "/bin/sleep", "argv": ["infinity"]},
    }

    def post(path: str, body: dict[str, Any]) -> None:
        request = dispatcher.http.build_request("POST", path, json=body, headers=AUTH)
        sent = dispatcher.send(request)
        assert sent.is_success, sent.text

    post("/definitions", definition)
    for i in range(1, 4):
        post(f"/processes/known-{i}/schedule", {"definition_id": "known"})
    deadline = time.monotonic() + 20
    while not [n for n in dispatcher.get("/nodes") if n["connected"]]:
        assert time.monotonic() < deadline, "no fake node joined"
        time.sleep(0.05)


def test_generated_requests_get_no_5xx_and_only_documented_answers(
    dispatcher: InProcess,
) -> None:
    document = dispatcher.get("/openapi.json")
    schema = schemathesis.openapi.from_dict(_without_security(document))
    _seed(dispatcher)
    known = Known()
    known.refresh(dispatcher)
    tally = Tally()
    started = time.monotonic()

    def free(operation: Any) -> Any:
        return operation.as_strategy(generation_mode=GenerationMode.POSITIVE)

    def aimed(operation: Any) -> Any:
        known.refresh(dispatcher)
        return st.tuples(free(operation), st.integers(0, 10**6)).map(
            lambda pair: _aim(pair[0], known, pair[1])
        )

    def negative(operation: Any) -> Any:
        return operation.as_strategy(generation_mode=GenerationMode.NEGATIVE)

    _run_pass(dispatcher, schema, "free", free, POSITIVE_CHECKS, tally)
    _run_pass(dispatcher, schema, "aimed", aimed, POSITIVE_CHECKS, tally)
    _run_pass(dispatcher, schema, "negative", negative, NEGATIVE_CHECKS, tally)
    elapsed = time.monotonic() - started
    print(
        f"schemathesis: {tally.requests} requests in {elapsed:.1f} s; by pass {tally.by_pass};"
        f" statuses {dict(sorted(tally.statuses.items()))}"
    )
    assert not tally.failures, "\n\n".join(tally.failures)
    assert tally.requests >= LEAST
    # the aimed pass reached the paths that succeed, not only the refusals
    assert tally.statuses.get(200, 0) >= 300
    # and the dispatcher is whole afterwards
    assert dispatcher.runtime.failure is None
    assert dispatcher.get("/health") == {"status": "ok"}
    assert dispatcher.get("/dump")["processes"]["total"] >= 3
