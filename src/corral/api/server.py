"""Serving the API with uvicorn inside an already running event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI


@dataclass
class APIServer:
    server: uvicorn.Server
    task: asyncio.Task[None]
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True


class _Server(uvicorn.Server):
    """uvicorn's server, minus its signal handling.

    uvicorn catches SIGTERM and SIGINT, shuts down, then raises the signal again, which
    would kill ``corral serve`` before it closed the dispatcher (and released its lease).
    The caller handles the signals itself, by calling `APIServer.stop`.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def open_api_server(app: FastAPI, host: str, port: int) -> APIServer | None:
    """Start serving ``app``; return once it listens (None if it could not start).

    The server shares the caller's loop, so routes call the service without a thread hop.
    It handles no signal: the caller stops it.
    """
    server = _Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            loop="none",
            http="httptools",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
    )
    task = asyncio.get_running_loop().create_task(server.serve())
    # uvicorn offers only a flag for "listening"; poll it briefly.
    while not server.started and not task.done():  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    if not server.started:
        await task
        return None
    bound = server.servers[0].sockets[0].getsockname()
    return APIServer(server, task, str(bound[0]), int(bound[1]))
