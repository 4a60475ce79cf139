"""A fake ``DispatcherService`` for the HTTP-layer tests, and tests that it behaves.

The API, client and CLI tests import :class:`FakeService`, :class:`PortalTransport` and
:func:`cli_runner` from here. The fake is small but real code: it keeps definitions and
processes, raises the ``corral.errors`` classes the real dispatcher raises, and satisfies
the Protocol under mypy, so the HTTP layer is tested against the contract, not mocks.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import anyio.from_thread
import httpx
import pytest
from click.testing import CliRunner, Result

from corral.api import DispatcherService, create_app
from corral.cli import cli
from corral.cli._context import Settings
from corral.client import Client
from corral.errors import Conflict, CorralError, InvalidRequest, NotFound, WaitTimeout

TOKEN = "test-token-123"
BASE_URL = "http://corral.test"
TERMINAL = ("700-TERMINATED", "800-EXITED", "850-FAILED", "900-REJECTED")


class FakeService:
    """In-memory definitions and processes; a process jumps straight to ``scheduled_state``."""

    def __init__(self) -> None:
        self.idle_behavior = "run"
        self.definitions: dict[str, dict[str, Any]] = {}
        self.processes: dict[str, dict[str, Any]] = {}
        self.logs: dict[tuple[str, str], str] = {}
        #: what events() yields before it ends (the real one never ends)
        self.queued_events: list[dict[str, Any]] = []
        #: raised by events() after the queued events, if set
        self.event_error: Exception | None = None
        #: seconds events() sleeps before each event, to exercise keep-alives
        self.event_delay = 0.0
        self.scheduled_state = "500-RUNNING"
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        #: the actor each call that may change something was made for
        self.actors: list[str] = []
        self.views = FakeViews(self)

    # -- definitions -------------------------------------------------------------------

    async def create_definition(
        self,
        definition_id: str,
        definition_type: str,
        executable: dict[str, Any],
        name: str | None = None,
        description: str | None = None,
        *,
        actor: str = "",
    ) -> dict[str, Any]:
        doc = _definition(definition_id, definition_type, executable, name, description)
        self.calls.append(("create_definition", (definition_id,)))
        self.actors.append(actor)
        existing = self.definitions.get(definition_id)
        if existing is not None and existing != doc:
            raise Conflict(f"definition {definition_id} exists with other parameters")
        self.definitions[definition_id] = doc
        return doc

    async def update_definition(
        self,
        definition_id: str,
        definition_type: str,
        executable: dict[str, Any],
        name: str | None = None,
        description: str | None = None,
        *,
        actor: str = "",
    ) -> dict[str, Any]:
        self.describe_definition(definition_id)
        doc = _definition(definition_id, definition_type, executable, name, description)
        self.calls.append(("update_definition", (definition_id,)))
        self.actors.append(actor)
        self.definitions[definition_id] = doc
        return doc

    def describe_definition(self, definition_id: str) -> dict[str, Any]:
        try:
            return self.definitions[definition_id]
        except KeyError:
            raise NotFound(f"no definition {definition_id!r}", field="definition_id") from None

    async def remove_definition(self, definition_id: str, *, actor: str = "") -> None:
        self.actors.append(actor)
        self.describe_definition(definition_id)
        users = [p["upid"] for p in self.processes.values() if p["definition_id"] == definition_id]
        if users:
            raise Conflict(f"definition {definition_id} is used by {', '.join(users)}")
        self.calls.append(("remove_definition", (definition_id,)))
        del self.definitions[definition_id]

    def list_definitions(self) -> list[dict[str, Any]]:
        return list(self.definitions.values())

    # -- processes ---------------------------------------------------------------------

    async def create_process(
        self, upid: str, definition_id: str, name: str | None = None, *, actor: str = ""
    ) -> dict[str, Any]:
        self.actors.append(actor)
        self.describe_definition(definition_id)
        if upid in self.processes:
            return self.processes[upid]
        self.processes[upid] = _process(upid, definition_id, name, "100-UNSCHEDULED")
        return self.processes[upid]

    async def schedule_process(
        self,
        upid: str,
        definition_id: str | None = None,
        configuration: dict[str, Any] | None = None,
        subscribers: list[str] | None = None,
        constraints: dict[str, Any] | None = None,
        queueing_mode: str | None = None,
        restart_mode: str | None = None,
        execution_engine_id: str | None = None,
        node_exclusive: str | None = None,
        name: str | None = None,
        request_id: str | None = None,
        *,
        actor: str = "",
    ) -> dict[str, Any]:
        self.actors.append(actor)
        existing = self.processes.get(upid)
        definition_id = definition_id or (existing or {}).get("definition_id")
        if definition_id is None:
            raise InvalidRequest("definition_id is required", field="definition_id")
        self.describe_definition(definition_id)
        if execution_engine_id == "nope":
            raise NotFound("no engine 'nope'", field="execution_engine_id")
        process = _process(upid, definition_id, name, self.scheduled_state)
        process.update(
            configuration=configuration or {},
            subscribers=subscribers or [],
            constraints=constraints or {},
            queueing_mode=queueing_mode or "ALWAYS",
            restart_mode=restart_mode or "ABNORMAL",
            execution_engine_id=execution_engine_id,
            node_exclusive=node_exclusive,
            request_id=request_id,
        )
        self.processes[upid] = process
        self.calls.append(("schedule_process", (upid, definition_id)))
        return process

    def describe_process(self, upid: str) -> dict[str, Any]:
        if upid == "boom":
            raise RuntimeError("secret internal detail")
        try:
            return self.processes[upid]
        except KeyError:
            raise NotFound(f"no process {upid!r}", field="upid") from None

    def describe_processes(self) -> list[dict[str, Any]]:
        return list(self.processes.values())

    async def restart_process(self, upid: str, *, actor: str = "") -> dict[str, Any]:
        self.actors.append(actor)
        process = self.describe_process(upid)
        process.update(round=process["round"] + 1, state="500-RUNNING")
        return process

    async def terminate_process(self, upid: str, *, actor: str = "") -> dict[str, Any]:
        self.actors.append(actor)
        process = self.describe_process(upid)
        process.update(state="700-TERMINATED", end_reason="terminated on request")
        return process

    async def wait_process(
        self,
        upid: str,
        states: list[str] | None,
        timeout: float,  # noqa: ASYNC109 (the Protocol's signature)
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            process = self.describe_process(upid)
            if process["state"] in TERMINAL or _matches(process["state"], states):
                return process
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"process {upid} is still {process['state']}")
            await asyncio.sleep(0.005)

    def set_state(self, upid: str, state: str, **fields: Any) -> None:
        self.processes[upid].update(state=state, **fields)

    # -- the rest ----------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        return {"definitions": len(self.definitions), "processes": len(self.processes)}

    def list_nodes(self) -> list[dict[str, Any]]:
        return [
            {
                "node_id": "node-1",
                "engine": "default",
                "instance_type": "small",
                "price": 0.02,
                "state": "busy",
                "health": "ok",
                "hostname": "alpha",
                "labels": {"zone": "a"},
                "slots": 4,
                "used": 1,
                "idle_behavior": self.idle_behavior,
                "last_heard": 0.5,
            }
        ]

    def metrics(self) -> bytes:
        return b"# HELP corral_queue_length Processes waiting.\ncorral_queue_length 0.0\n"

    def describe_node(self, node_id: str) -> dict[str, Any]:
        for node in self.list_nodes():
            if node["node_id"] == node_id:
                return node
        raise NotFound(f"no node {node_id!r}", field="node_id")

    async def node_action(self, node_id: str, action: str, *, actor: str = "") -> dict[str, Any]:
        self.actors.append(actor)
        self.describe_node(node_id)
        self.idle_behavior = action
        return self.describe_node(node_id)

    def list_engines(self) -> list[dict[str, Any]]:
        return [{"engine_id": "default", "driver": "local", "slots": 4}]

    async def read_log(self, upid: str, stream: str, offset: int, limit: int) -> dict[str, Any]:
        self.describe_process(upid)
        text = self.logs.get((upid, stream), "")
        data = text[offset : offset + limit]
        return {
            "upid": upid,
            "stream": stream,
            "data": data,
            "offset": offset,
            "next_offset": offset + len(data),
            "size": len(text),
        }

    def events(self, upid: str | None) -> AsyncIterator[dict[str, Any]]:
        if upid is not None and upid not in self.processes:
            raise NotFound(f"no process {upid!r}", field="upid")
        return self._events(upid)

    async def _events(self, upid: str | None) -> AsyncIterator[dict[str, Any]]:
        for event in self.queued_events:
            await asyncio.sleep(self.event_delay)
            if upid is None or event["upid"] == upid:
                yield event
        if self.event_error is not None:
            raise self.event_error


class FakeViews:
    """The read models, over the fake's processes; ``record`` keeps what it is told."""

    def __init__(self, service: FakeService) -> None:
        self._service = service
        self.recorded: list[tuple[str, str, str]] = []
        self.calls: list[dict[str, Any]] = []

    def overview(self) -> dict[str, Any]:
        states = [p["state"] for p in self._service.processes.values()]
        return {"processes": {"total": len(states), "by_state": dict(Counter(states))}}

    def processes(
        self,
        *,
        states: Iterable[str] = (),
        engine: str | None = None,
        node: str | None = None,
        definition: str | None = None,
        text: str | None = None,
        sort: str = "created",
        descending: bool = True,
        offset: int = 0,
        limit: int = 50,
    ) -> dict[str, Any]:
        self.calls.append(
            {"states": list(states), "engine": engine, "node": node, "text": text, "sort": sort}
        )
        items = sorted(self._service.processes.values(), key=lambda p: str(p[sort]))
        if descending:
            items.reverse()
        if states:
            items = [p for p in items if p["state"] in states]
        return {"total": len(items), "offset": offset, "limit": limit, "items": items}

    def history(self, upid: str) -> dict[str, Any]:
        process = self._service.describe_process(upid)
        return {"upid": upid, "steps": [{"state": process["state"], "time": 1.0}], "kept": 32}

    def audit_log(
        self, limit: int = 100, before: int | None = None, target: str | None = None
    ) -> dict[str, Any]:
        entries = [
            {"actor": actor, "action": action, "target": what}
            for actor, action, what in self.recorded
            if target is None or what == target
        ]
        return {"entries": entries[-limit:], "next_before": None, "kept": 100}

    async def record(self, actor: str, action: str, target: str) -> None:
        self.recorded.append((actor, action, target))

    def computations(self) -> dict[str, Any]:
        return {"computations": []}

    def pipelines(self, limit: int = 50) -> dict[str, Any]:
        return {"queue": None, "pipelines": []}


def _definition(
    definition_id: str,
    definition_type: str,
    executable: dict[str, Any],
    name: str | None,
    description: str | None,
) -> dict[str, Any]:
    if not executable.get("exec", "").startswith("/"):
        raise InvalidRequest("exec must be an absolute path", field="executable.exec")
    return {
        "definition_id": definition_id,
        "definition_type": definition_type,
        "executable": executable,
        "name": name,
        "description": description,
    }


def _process(upid: str, definition_id: str, name: str | None, state: str) -> dict[str, Any]:
    return {
        "upid": upid,
        "definition_id": definition_id,
        "name": name,
        "state": state,
        "round": 0,
        "assigned": "node-1",
        "hostname": "alpha",
        "engine": "default",
        "pid": 4242,
        "starts": 1,
        "exit_code": None,
        "waiting_reason": None,
        "end_reason": None,
        "created_at": 1_700_000_000.0,
    }


def _matches(state: str, wanted: list[str] | None) -> bool:
    return any(w.upper() in (state, state.partition("-")[2]) for w in wanted or ())


def event(upid: str, state: str, previous: str) -> dict[str, Any]:
    process = _process(upid, "def", None, state)
    return {
        "upid": upid,
        "round": 0,
        "state": state,
        "previous_state": previous,
        "time": 1.0,
        "process": process,
    }


async def collect(source: AsyncIterator[dict[str, Any]], into: list[dict[str, Any]]) -> None:
    """Append what ``source`` yields to ``into``, so a test can see what came before an error."""
    async for item in source:
        into.append(item)


class PortalTransport(httpx.BaseTransport):
    """A blocking httpx transport into an ASGI app running on an anyio portal's loop.

    The app (and the fake's asyncio waits) live on one event loop in a thread, as they
    would in a server, while the blocking ``Client`` and the CLI call in from the test.
    """

    def __init__(self, app: Any, portal: anyio.from_thread.BlockingPortal) -> None:
        self._asgi = httpx.ASGITransport(app=app)
        self._portal = portal

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()

        async def call() -> tuple[int, httpx.Headers, bytes]:
            inner = httpx.Request(
                request.method, request.url, headers=request.headers, content=body
            )
            response = await self._asgi.handle_async_request(inner)
            return response.status_code, response.headers, await response.aread()

        status, headers, content = self._portal.call(call)
        return httpx.Response(status, headers=headers, content=content)


def cli_runner(
    service: FakeService, portal: anyio.from_thread.BlockingPortal, columns: str | None = "200"
) -> Callable[..., Result]:
    """Run ``corral ARGS...`` with click's runner against an app over ``service``.

    ``columns`` is the terminal width rich sees (None: as if piped into another program).
    """
    app = create_app(service, TOKEN)

    def factory(url: str | None, token: str | None, ca: str | None) -> Client:
        return Client(url or BASE_URL, token or TOKEN, transport=PortalTransport(app, portal))

    def invoke(*args: str) -> Result:
        settings = Settings(client_factory=factory)
        return CliRunner().invoke(cli, list(args), obj=settings, env={"COLUMNS": columns})

    return invoke


@pytest.fixture
def portal() -> Iterator[anyio.from_thread.BlockingPortal]:
    with anyio.from_thread.start_blocking_portal() as started:
        yield started


def test_fake_satisfies_the_service_protocol() -> None:
    service: DispatcherService = FakeService()  # mypy checks the Protocol here
    assert service.list_definitions() == []


def test_portal_transport_reaches_the_app(portal: anyio.from_thread.BlockingPortal) -> None:
    app = create_app(FakeService(), TOKEN)
    with httpx.Client(transport=PortalTransport(app, portal), base_url=BASE_URL) as http:
        assert http.get("/health").json() == {"status": "ok"}
        assert http.get("/nodes").status_code == 401


@pytest.mark.anyio
async def test_fake_wait_times_out_with_wait_timeout() -> None:
    fake = FakeService()
    await fake.create_definition("d", "supd", {"exec": "/bin/true"})
    await fake.create_process("p", "d")
    with pytest.raises(WaitTimeout):
        await fake.wait_process("p", ["RUNNING"], 0.01)


@pytest.mark.anyio
async def test_fake_events_end_with_the_configured_error() -> None:
    fake = FakeService()
    fake.queued_events = [event("p", "500-RUNNING", "400-PENDING")]
    fake.event_error = CorralError("stream broke")
    seen: list[dict[str, Any]] = []
    with pytest.raises(CorralError, match="stream broke"):
        await collect(fake.events(None), seen)
    assert [item["state"] for item in seen] == ["500-RUNNING"]
