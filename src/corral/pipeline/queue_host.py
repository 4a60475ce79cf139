"""A queue server inside a framework process (or ``corral queue serve``), on a thread.

The first framework process of a pipeline hosts the shared queue when none answers, as the
first DRP process does. Its store is a SQLite file in the configured ``state_dir`` (or the
``queue_store`` URL, PostgreSQL included), and its
secret comes from the configuration or, failing that, from ``state_dir/queue_secret``, made
at random by the first host and private to its user.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from concurrent.futures import Future
from pathlib import Path

from corral.pipeline.config import FrameworkConfig
from corral.queue import OwnQueueServer, QueueServer
from corral.secretfile import load_or_create_token
from corral.store import open_store
from corral.tls import read_certificates, server_context, trusting


def queue_client_tls(config: FrameworkConfig) -> ssl.SSLContext | None:
    """How a client dials the queue: over TLS, trusting exactly the configured certificate
    (whatever address reaches it), or in clear without one."""
    if config.queue_manager_certificate is None:
        return None
    certificate = Path(config.queue_manager_certificate).expanduser()
    return trusting(
        read_certificates(certificate, "queue_manager_certificate"), check_hostname=False
    )


def queue_server_tls(config: FrameworkConfig) -> ssl.SSLContext | None:
    """How a hosted queue listens: over TLS with the configured certificate and key."""
    if config.queue_manager_certificate is None:
        return None
    key = config.queue_manager_key
    return server_context(
        Path(config.queue_manager_certificate).expanduser(),
        Path(key).expanduser() if key else None,
    )


def queue_secret(config: FrameworkConfig, create: bool) -> str | None:
    """The configured auth code, or the state dir's secret (made if ``create``)."""
    if config.queue_manager_auth_code:
        return config.queue_manager_auth_code
    path = config.secret_file()
    if create:
        return load_or_create_token(path)
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


class QueueHost:
    """A ``QueueServer`` on its own event loop thread."""

    def __init__(self, config: FrameworkConfig) -> None:
        self.config = config
        self.state = Path(config.state_dir).expanduser()
        self.store_url = config.queue_store or f"sqlite:///{self.state / 'queue.db'}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: QueueServer | None = None

    def start(self) -> None:
        """Listen on the configured host and port; raises OSError if it is taken."""
        secret = queue_secret(self.config, create=True)
        assert secret is not None  # made when missing
        self.state.mkdir(mode=0o700, parents=True, exist_ok=True)
        tls = queue_server_tls(self.config)
        server = OwnQueueServer(open_store(self.store_url), secret, self.config.visibility_timeout)
        self._thread.start()
        started: Future[None] = asyncio.run_coroutine_threadsafe(
            server.listen(
                self.config.queue_manager_hostname, self.config.queue_manager_portnr, tls
            ),
            self._loop,
        )
        try:
            started.result(timeout=30)
        except BaseException:
            self._stop_loop()
            raise
        self._server = server

    @property
    def address(self) -> tuple[str, int]:
        return self._server.address if self._server is not None else ("", 0)

    def wait(self) -> None:
        """Block until the server stops (a failed commit, or ``stop`` from another thread)."""
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.stopped.wait(), self._loop).result()

    def stop(self) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.aclose(), self._loop).result(10)
            self._server = None
        self._stop_loop()

    def _stop_loop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()
