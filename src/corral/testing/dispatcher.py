"""A real dispatcher in a background thread, for tests of code that talks to corral.

``open_test_dispatcher`` starts the runtime and its HTTP API on a free loopback port in a
thread with its own event loop, and yields a handle with a ready ``Client``. Nodes are
real local agents; on exit they are destroyed with everything they run, so a test leaves
no process behind.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from corral.api.app import create_app
from corral.api.server import APIServer, open_api_server
from corral.client import Client
from corral.config import Config, parse_config
from corral.dispatcher.runtime import Runtime, RuntimeSettings
from corral.drivers.local import LocalDriver
from corral.secretfile import load_or_create_token
from corral.tls import ServerTLS


@dataclass
class TestDispatcher:
    home: Path
    url: str
    token: str
    client: Client
    runtime: Runtime
    #: opens the API for reading only (the dashboard's other log-in)
    readonly_token: str


@contextmanager
def open_test_dispatcher(
    config: Config | str | None = None,
    home: Path | None = None,
    start_timeout: float = 30.0,
    agent_tls: ServerTLS | None = None,
) -> Iterator[TestDispatcher]:
    """Run a dispatcher until the block ends; ``config`` may be TOML text. With
    ``agent_tls`` its agent port speaks TLS (its API stays plain HTTP)."""
    if isinstance(config, str):
        import tomllib

        config = parse_config(tomllib.loads(config))
    own_home = home is None
    home = home or Path(tempfile.mkdtemp(prefix="corral-test-"))
    token = load_or_create_token(home / "token")
    readonly_token = load_or_create_token(home / "readonly_token")
    agent_token = load_or_create_token(home / "agent_token")
    runtime = Runtime(RuntimeSettings(home, config or _small_default(), agent_token, tls=agent_tls))
    ready = threading.Event()
    box: dict[str, object] = {}

    async def serve() -> None:
        try:
            dispatcher = await runtime.start()
            app = create_app(dispatcher, token, readonly_token=readonly_token)
            api = await open_api_server(app, "127.0.0.1", 0)
            if api is None:
                raise RuntimeError("the API server did not start")
            box["api"] = api
            box["url"] = api.url
            ready.set()
            await api.task
        except BaseException as exc:
            box["error"] = exc
            ready.set()
        finally:
            await runtime.aclose()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    try:
        if not ready.wait(start_timeout) or "error" in box:
            raise RuntimeError(f"test dispatcher did not start: {box.get('error')!r}")
        url = str(box["url"])
        with Client(url, token) as client:
            yield TestDispatcher(home, url, token, client, runtime, readonly_token)
    finally:
        api = box.get("api")
        if isinstance(api, APIServer):
            api.stop()
        thread.join(15)
        destroy_local_nodes(home)
        if own_home:
            shutil.rmtree(home, ignore_errors=True)


def destroy_local_nodes(home: Path, nodes_dir: Path | None = None) -> None:
    """Kill every local agent under ``home`` (or ``nodes_dir``) and what it runs.

    Callable from a coroutine too (a benchmark's ``finally``): the driver's own loop then
    runs in a thread of its own.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(_destroy_local_nodes(home, nodes_dir))
        return
    worker = threading.Thread(target=asyncio.run, args=(_destroy_local_nodes(home, nodes_dir),))
    worker.start()
    worker.join()


async def _destroy_local_nodes(home: Path, nodes_dir: Path | None) -> None:
    nodes = nodes_dir or home / "nodes"
    if not nodes.is_dir():
        return
    driver = LocalDriver(home, "127.0.0.1:0", "", nodes)  # destroys only: no agent token needed
    for node in list(nodes.iterdir()):
        await driver.destroy(node.name)


def _small_default() -> Config:
    return parse_config(
        {
            "engines": [
                {
                    "id": "default",
                    "slots": 4,
                    "base_need": 1,
                    "maximum_vms": 1,
                    "heartbeat_period": 0.2,
                    "heartbeat_warning": 1.0,
                    "heartbeat_missing": 2.0,
                    "terminate_grace": 2.0,
                    # a test's processes run as the test does, root included
                    "allow_root": True,
                }
            ]
        }
    )
