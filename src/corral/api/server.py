"""Serving the API with uvicorn inside an already running event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI


@dataclass
class APIServer:
    server: uvicorn.Server
    task: asyncio.Task[None]
    host: str
    port: int
    tls: bool = False

    @property
    def url(self) -> str:
        """Where clients of this machine reach it: a wildcard address stands for loopback
        (the name a certificate carries, where 0.0.0.0 is none)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

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


async def open_api_server(
    app: FastAPI,
    host: str,
    port: int,
    certfile: Path | None = None,
    keyfile: Path | None = None,
) -> APIServer | None:
    """Start serving ``app`` (over HTTPS with ``certfile``, its key in ``keyfile`` or in
    itself); return once it listens (None if it could not start).

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
            ssl_certfile=certfile,
            ssl_keyfile=keyfile,
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
    return APIServer(server, task, str(bound[0]), int(bound[1]), certfile is not None)
