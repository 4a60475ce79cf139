"""``Client``: the dispatcher's operations over HTTP, blocking, with plain dicts out.

Method names and parameters are the EPU Process Dispatcher's (``schedule_process``,
``queueing_mode``, ``execution_engine_id``...). Errors raised are ``corral.errors`` classes,
the same ones the dispatcher raises in-process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any, cast

import httpx

from corral.client import _requests as r
from corral.errors import WaitTimeout


class Client:
    """A blocking client; use it as a context manager, or call :meth:`close`.

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
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        urls = r.split_urls(r.discover_url(url))
        self._dispatchers = r.Dispatchers(urls)
        self._token = r.discover_token(token)
        self._timeout = timeout
        self._http = httpx.Client(
            headers=r.headers(self._token),
            timeout=timeout,
            transport=transport,
            verify=r.discover_trust(urls, ca),
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    @property
    def url(self) -> str:
        """The dispatcher's URL: of those given, the one that answered last."""
        return self._dispatchers.current

    def _send(self, call: r.Call) -> Any:
        response = self._request(call, self._timeout + call.extra_timeout)
        return r.decode(response, has_token=self._token is not None)

    def _request(
        self, call: r.Call, limits: float | httpx.Timeout, *, stream: bool = False
    ) -> httpx.Response:
        """Send ``call`` to the active dispatcher (see ``_requests.Dispatchers``)."""
        dispatchers = self._dispatchers
        for url in dispatchers.order():
            request = self._http.build_request(
                call.method, url + call.path, params=call.params, json=call.json, timeout=limits
            )
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                dispatchers.unreachable(call, url, exc)
                continue
            if dispatchers.standing_by(url, response):
                response.close()
                continue
            dispatchers.answered(url)
            return response
        raise dispatchers.none_active()

    def _dict(self, call: r.Call) -> dict[str, Any]:
        return cast(dict[str, Any], self._send(call))

    def _list(self, call: r.Call) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self._send(call))

    # -- definitions -------------------------------------------------------------------

    def create_definition(
        self,
        definition_id: str,
        definition_type: str,
        executable: dict[str, Any],
        name: str | None = None,
        description: str | None = None,
    ) -> dict[str, Any]:
        call = r.create_definition(definition_id, definition_type, executable, name, description)
        return self._dict(call)

    def describe_definition(self, definition_id: str) -> dict[str, Any]:
        return self._dict(r.describe_definition(definition_id))

    def update_definition(
        self,
        definition_id: str,
        definition_type: str,
        executable: dict[str, Any],
        name: str | None = None,
        description: str | None = None,
    ) -> dict[str, Any]:
        call = r.update_definition(definition_id, definition_type, executable, name, description)
        return self._dict(call)

    def remove_definition(self, definition_id: str) -> None:
        self._send(r.remove_definition(definition_id))

    def list_definitions(self) -> list[dict[str, Any]]:
        return self._list(r.list_definitions())

    # -- processes ---------------------------------------------------------------------

    def create_process(
        self, upid: str, definition_id: str, name: str | None = None
    ) -> dict[str, Any]:
        return self._dict(r.create_process(upid, definition_id, name))

    def schedule_process(
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
        return self._dict(call)

    def schedule_processes(
        self, processes: list[dict[str, Any]], request_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Schedule many processes in one request: each item is ``upid`` plus the
        parameters of :meth:`schedule_process`. All are accepted, or none is.
        ``request_id`` names the call, as for :meth:`schedule_process`."""
        return self._list(r.schedule_processes(processes, request_id))

    def describe_process(self, upid: str) -> dict[str, Any]:
        return self._dict(r.describe_process(upid))

    def describe_processes(self) -> list[dict[str, Any]]:
        return self._list(r.describe_processes())

    def process_history(self, upid: str) -> dict[str, Any]:
        """The process's last state changes, oldest first: ``{"upid", "steps", "kept"}``,
        each step ``{"round", "state", "time", "detail"}``."""
        return self._dict(r.process_history(upid))

    def audit_log(
        self, limit: int = 100, before: int | None = None, target: str | None = None
    ) -> dict[str, Any]:
        """Operators' actions, newest first: ``{"entries", "next_before", "kept"}``. Pass
        ``next_before`` as ``before`` for the page before; ``target`` keeps the entries
        about one process, node or definition."""
        return self._dict(r.audit_log(limit, before, target))

    def restart_process(self, upid: str) -> dict[str, Any]:
        return self._dict(r.restart_process(upid))

    def terminate_process(self, upid: str) -> dict[str, Any]:
        return self._dict(r.terminate_process(upid))

    def wait_process(
        self,
        upid: str,
        states: list[str] | None = None,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Return the process once it is in one of ``states``, or terminal.

        Long-polls in chunks of at most ``WAIT_CHUNK`` seconds until ``timeout`` passes,
        then raises :class:`~corral.errors.WaitTimeout`.
        """
        deadline = time.monotonic() + timeout
        while True:
            chunk = r.wait_chunk(deadline - time.monotonic())
            try:
                return self._dict(r.wait_process(upid, states, chunk))
            except WaitTimeout:
                if time.monotonic() >= deadline:
                    raise r.wait_timed_out(upid, states, timeout) from None

    def read_log(
        self, upid: str, stream: str = "stdout", offset: int = 0, limit: int = 65536
    ) -> dict[str, Any]:
        """A chunk of a process's log: ``{"data", "offset", "next_offset", "size", ...}``."""
        return self._dict(r.read_log(upid, stream, offset, limit))

    def events(self, upid: str | None = None) -> Iterator[dict[str, Any]]:
        """State-change events (of every process, or of ``upid``) as they happen.

        The iterator ends only when the server closes the stream; closing it (or leaving a
        ``for`` loop) closes the connection.
        """
        response = self._request(r.events(upid), r.events_timeout(self._timeout), stream=True)
        try:
            if not response.is_success:
                response.read()
                raise r.error_from(response, has_token=self._token is not None)
            decoder = r.EventDecoder()
            for line in response.iter_lines():
                event = decoder.feed(line)
                if event is not None:
                    yield event
        except httpx.TransportError as exc:
            raise r.unavailable(self.url, exc) from None
        finally:
            response.close()

    # -- the dispatcher ----------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        return self._dict(r.dump())

    def list_nodes(self) -> list[dict[str, Any]]:
        return self._list(r.list_nodes())

    def describe_node(self, node_id: str) -> dict[str, Any]:
        return self._dict(r.describe_node(node_id))

    def hold_node(self, node_id: str) -> dict[str, Any]:
        """Keep the node but place nothing new on it."""
        return self._dict(r.node_action(node_id, "hold"))

    def drain_node(self, node_id: str) -> dict[str, Any]:
        """Place nothing new on the node; retire it once its processes are done."""
        return self._dict(r.node_action(node_id, "drain"))

    def run_node(self, node_id: str) -> dict[str, Any]:
        """Let the node take work again (undoes hold and drain)."""
        return self._dict(r.node_action(node_id, "run"))

    def kill_node(self, node_id: str) -> dict[str, Any]:
        """Retire the node now; its processes follow their restart modes."""
        return self._dict(r.node_action(node_id, "kill"))

    def list_engines(self) -> list[dict[str, Any]]:
        return self._list(r.list_engines())

    def health(self) -> dict[str, Any]:
        return self._dict(r.health())
