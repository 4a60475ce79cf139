"""``AsyncClient``: the operations of :class:`corral.Client`, for asyncio.

Same names, parameters, results and errors as the blocking client; both build their
requests with :mod:`corral.client._requests`, so they cannot drift apart.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, cast

import httpx

from corral.client import _requests as r
from corral.errors import WaitTimeout


class AsyncClient:
    """An asyncio client; use it as an async context manager, or await :meth:`aclose`.

    ``url``, ``token`` and ``ca`` (a PEM file of the certificates an ``https`` dispatcher
    is trusted by) default to what :mod:`corral.client._requests` discovers (the
    environment, then the files ``corral serve`` writes). ``timeout`` is in seconds per
    request; ``transport`` swaps httpx's network transport (tests, custom TLS).
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        *,
        ca: str | os.PathLike[str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        urls = r.split_urls(r.discover_url(url))
        self._dispatchers = r.Dispatchers(urls)
        self._token = r.discover_token(token)
        self._timeout = timeout
        self._http = httpx.AsyncClient(
            headers=r.headers(self._token),
            timeout=timeout,
            transport=transport,
            verify=r.discover_trust(urls, ca),
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def url(self) -> str:
        """The dispatcher's URL: of those given, the one that answered last."""
        return self._dispatchers.current

    async def _send(self, call: r.Call) -> Any:
        response = await self._request(call, self._timeout + call.extra_timeout)
        return r.decode(response, has_token=self._token is not None)

    async def _request(
        self, call: r.Call, limits: float | httpx.Timeout, *, stream: bool = False
    ) -> httpx.Response:
        """Send ``call`` to the active dispatcher (see ``_requests.Dispatchers``)."""
        dispatchers = self._dispatchers
        for url in dispatchers.order():
            request = self._http.build_request(
                call.method, url + call.path, params=call.params, json=call.json, timeout=limits
            )
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                dispatchers.unreachable(call, url, exc)
                continue
            if dispatchers.standing_by(url, response):
                await response.aclose()
                continue
            dispatchers.answered(url)
            return response
        raise dispatchers.none_active()

    async def _dict(self, call: r.Call) -> dict[str, Any]:
        return cast(dict[str, Any], await self._send(call))

    async def _list(self, call: r.Call) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], await self._send(call))

    # -- definitions -------------------------------------------------------------------

    async def create_definition(
        self,
        definition_id: str,
        definition_type: str,
        executable: dict[str, Any],
        name: str | None = None,
        description: str | None = None,
    ) -> dict[str, Any]:
        call = r.create_definition(definition_id, definition_type, executable, name, description)
        return await self._dict(call)

    async def describe_definition(self, definition_id: str) -> dict[str, Any]:
        return await self._dict(r.describe_definition(definition_id))

    async def update_definition(
        self,
        definition_id: str,
        definition_type: str,
        executable: dict[str, Any],
        name: str | None = None,
        description: str | None = None,
    ) -> dict[str, Any]:
        call = r.update_definition(definition_id, definition_type, executable, name, description)
        return await self._dict(call)

    async def remove_definition(self, definition_id: str) -> None:
        await self._send(r.remove_definition(definition_id))

    async def list_definitions(self) -> list[dict[str, Any]]:
        return await self._list(r.list_definitions())

    # -- processes ---------------------------------------------------------------------

    async def create_process(
        self, upid: str, definition_id: str, name: str | None = None
    ) -> dict[str, Any]:
        return await self._dict(r.create_process(upid, definition_id, name))

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
    ) -> dict[str, Any]:
        """Schedule (or run again, once it has ended) the process ``upid``.

        ``request_id`` names this call: the same call sent again with it (say, after its
        answer was lost) does not run a process that has ended since a second time.
        """
        call = r.schedule_process(
            upid,
            definition_id=definition_id,
            configuration=configuration,
            subscribers=subscribers,
            constraints=constraints,
            queueing_mode=queueing_mode,
            restart_mode=restart_mode,
            execution_engine_id=execution_engine_id,
            node_exclusive=node_exclusive,
            name=name,
            request_id=request_id,
        )
        return await self._dict(call)

    async def schedule_processes(
        self, processes: list[dict[str, Any]], request_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Schedule many processes in one request; all are accepted, or none is.
        ``request_id`` names the call, as for :meth:`schedule_process`."""
        return await self._list(r.schedule_processes(processes, request_id))

    async def describe_process(self, upid: str) -> dict[str, Any]:
        return await self._dict(r.describe_process(upid))

    async def describe_processes(self) -> list[dict[str, Any]]:
        return await self._list(r.describe_processes())

    async def process_history(self, upid: str) -> dict[str, Any]:
        """The process's last state changes, oldest first: ``{"upid", "steps", "kept"}``,
        each step ``{"round", "state", "time", "detail"}``."""
        return await self._dict(r.process_history(upid))

    async def audit_log(
        self, limit: int = 100, before: int | None = None, target: str | None = None
    ) -> dict[str, Any]:
        """Operators' actions, newest first: ``{"entries", "next_before", "kept"}``. Pass
        ``next_before`` as ``before`` for the page before; ``target`` keeps the entries
        about one process, node or definition."""
        return await self._dict(r.audit_log(limit, before, target))

    async def restart_process(self, upid: str) -> dict[str, Any]:
        return await self._dict(r.restart_process(upid))

    async def terminate_process(self, upid: str) -> dict[str, Any]:
        return await self._dict(r.terminate_process(upid))

    async def wait_process(
        self,
        upid: str,
        states: list[str] | None = None,
        timeout: float = 60.0,  # noqa: ASYNC109 (the seed's wait takes a timeout)
    ) -> dict[str, Any]:
        """Return the process once it is in one of ``states``, or terminal.

        Long-polls in chunks of at most ``WAIT_CHUNK`` seconds until ``timeout`` passes,
        then raises :class:`~corral.errors.WaitTimeout`.
        """
        deadline = time.monotonic() + timeout
        while True:
            chunk = r.wait_chunk(deadline - time.monotonic())
            try:
                return await self._dict(r.wait_process(upid, states, chunk))
            except WaitTimeout:
                if time.monotonic() >= deadline:
                    raise r.wait_timed_out(upid, states, timeout) from None

    async def read_log(
        self, upid: str, stream: str = "stdout", offset: int = 0, limit: int = 65536
    ) -> dict[str, Any]:
        """A chunk of a process's log: ``{"data", "offset", "next_offset", "size", ...}``."""
        return await self._dict(r.read_log(upid, stream, offset, limit))

    async def events(self, upid: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """State-change events (of every process, or of ``upid``) as they happen.

        The iterator ends only when the server closes the stream; closing it (``aclose``,
        or leaving an ``async for`` loop) closes the connection.
        """
        response = await self._request(r.events(upid), r.events_timeout(self._timeout), stream=True)
        try:
            if not response.is_success:
                await response.aread()
                raise r.error_from(response, has_token=self._token is not None)
            decoder = r.EventDecoder()
            async for line in response.aiter_lines():
                event = decoder.feed(line)
                if event is not None:
                    yield event
        except httpx.TransportError as exc:
            raise r.unavailable(self.url, exc) from None
        finally:
            await response.aclose()

    # -- the dispatcher ----------------------------------------------------------------

    async def dump(self) -> dict[str, Any]:
        return await self._dict(r.dump())

    async def list_nodes(self) -> list[dict[str, Any]]:
        return await self._list(r.list_nodes())

    async def describe_node(self, node_id: str) -> dict[str, Any]:
        return await self._dict(r.describe_node(node_id))

    async def hold_node(self, node_id: str) -> dict[str, Any]:
        """Keep the node but place nothing new on it."""
        return await self._dict(r.node_action(node_id, "hold"))

    async def drain_node(self, node_id: str) -> dict[str, Any]:
        """Place nothing new on the node; retire it once its processes are done."""
        return await self._dict(r.node_action(node_id, "drain"))

    async def run_node(self, node_id: str) -> dict[str, Any]:
        """Let the node take work again (undoes hold and drain)."""
        return await self._dict(r.node_action(node_id, "run"))

    async def kill_node(self, node_id: str) -> dict[str, Any]:
        """Retire the node now; its processes follow their restart modes."""
        return await self._dict(r.node_action(node_id, "kill"))

    async def list_engines(self) -> list[dict[str, Any]]:
        return await self._list(r.list_engines())

    async def health(self) -> dict[str, Any]:
        return await self._dict(r.health())
