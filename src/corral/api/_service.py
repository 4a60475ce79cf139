"""The service the HTTP layer consumes, declared here by its consumer (practice 3).

The dispatcher's ``Dispatcher`` satisfies this Protocol, and so do the fakes in the tests;
mypy checks both. Every method raises only ``corral.errors`` classes on purpose
(``InvalidRequest`` with ``field``, ``NotFound``, ``Conflict``, ``WaitTimeout``,
``Unavailable``). The service owns the semantics (idempotency, conflicts, unknown
definitions or engines, executable validation); the API only checks the shape of requests.
Each operation that may change something takes the ``actor`` the audit log names for it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any, Protocol


class OperatorViews(Protocol):
    """What operators read: the dispatcher's ``views`` (``dispatcher.views.Views``)."""

    def overview(self) -> dict[str, Any]: ...

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
        """``{"total", "offset", "limit", "items", ...}``: one page of matching processes."""
        ...

    def history(self, upid: str) -> dict[str, Any]: ...

    def audit_log(
        self, limit: int = 100, before: int | None = None, target: str | None = None
    ) -> dict[str, Any]: ...

    async def record(self, actor: str, action: str, target: str) -> None:
        """Note an action that changes no table (a log-in) in the audit log."""
        ...

    def computations(self) -> dict[str, Any]: ...

    def pipelines(self, limit: int = 50) -> dict[str, Any]: ...


class DispatcherService(Protocol):
    """The EPU operations, plus waits, logs, nodes, engines and events."""

    async def create_definition(
        self,
        definition_id: str,
        definition_type: str,
        executable: dict[str, Any],
        name: str | None = None,
        description: str | None = None,
        *,
        actor: str = ...,
    ) -> dict[str, Any]: ...

    async def update_definition(
        self,
        definition_id: str,
        definition_type: str,
        executable: dict[str, Any],
        name: str | None = None,
        description: str | None = None,
        *,
        actor: str = ...,
    ) -> dict[str, Any]: ...

    def describe_definition(self, definition_id: str) -> dict[str, Any]: ...

    async def remove_definition(self, definition_id: str, *, actor: str = ...) -> None: ...

    def list_definitions(self) -> list[dict[str, Any]]: ...

    async def create_process(
        self, upid: str, definition_id: str, name: str | None = None, *, actor: str = ...
    ) -> dict[str, Any]: ...

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
        actor: str = ...,
    ) -> dict[str, Any]: ...

    async def schedule_processes(
        self, processes: list[dict[str, Any]], request_id: str | None = None, *, actor: str = ...
    ) -> list[dict[str, Any]]:
        """Each item: ``upid`` plus schedule_process's parameters; all or none."""
        ...

    def describe_process(self, upid: str) -> dict[str, Any]: ...

    def describe_processes(self) -> list[dict[str, Any]]: ...

    async def restart_process(self, upid: str, *, actor: str = ...) -> dict[str, Any]: ...

    async def terminate_process(self, upid: str, *, actor: str = ...) -> dict[str, Any]: ...

    async def wait_process(
        self,
        upid: str,
        states: list[str] | None,
        timeout: float,  # noqa: ASYNC109 (a long poll: the deadline is part of the request)
    ) -> dict[str, Any]:
        """Return the process once its state is in ``states`` or terminal.

        Raises ``WaitTimeout`` when ``timeout`` seconds pass first.
        """
        ...

    def dump(self) -> dict[str, Any]: ...

    def list_nodes(self) -> list[dict[str, Any]]: ...

    def metrics(self) -> bytes: ...

    def describe_node(self, node_id: str) -> dict[str, Any]: ...

    async def node_action(
        self, node_id: str, action: str, *, actor: str = ...
    ) -> dict[str, Any]: ...

    def list_engines(self) -> list[dict[str, Any]]: ...

    async def read_log(self, upid: str, stream: str, offset: int, limit: int) -> dict[str, Any]:
        """Return ``{"upid", "stream", "data", "offset", "next_offset", "size"}``."""
        ...

    def events(self, upid: str | None) -> AsyncIterator[dict[str, Any]]:
        """State-change events as they happen, forever (all processes, or one)."""
        ...

    @property
    def views(self) -> OperatorViews:
        """The read models for operators (the dashboard, ``/audit``, histories)."""
        ...
