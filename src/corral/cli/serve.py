"""``corral serve``: run a dispatcher with its HTTP API (the only CLI module that builds one).

State lives under ``--home`` (default ``$CORRAL_HOME``, else ``~/.corral``): the SQLite
store, the API token (``token``, mode 0600), the read-only token (``readonly_token``), the
agents' token, the API's address (``url``, so the client and CLI find it) and the local
nodes' directories. The dashboard is served at ``/ui/`` of the API's address.

With ``--tls`` (a self-signed certificate made once in the home) or ``--tls-cert``, the API,
the agent port and the queue speak TLS: the certificate is left in ``tls_certificate.pem`` for the
client and CLI, and handed to the agents the drivers start (``corral.tls``). Only then may
they listen beyond loopback without ``--allow-remote``.

On a PostgreSQL store several dispatchers may run at once: each serves its API at once, as
a standby, and the one that holds the lease is active (``corral.dispatcher.standby``).
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import click
from fastapi import FastAPI

from corral import eventloop
from corral.api.app import create_app
from corral.api.server import APIServer, open_api_server
from corral.config import Config, load_config, refusing_root
from corral.dispatcher.runtime import Runtime, RuntimeSettings
from corral.dispatcher.service import Dispatcher
from corral.dispatcher.standby import Role, Standby
from corral.errors import CorralError
from corral.secretfile import load_or_create_token, replace_file
from corral.store import open_store, supports_lease
from corral.tls import (
    CERTIFICATE_FILE,
    KEY_FILE,
    ServerTLS,
    ensure_self_signed,
)

DEFAULT_LISTEN = "127.0.0.1:7480"

#: The cyclic garbage collector's thresholds in the dispatcher: a young generation of 50,000
#: objects rather than 700. A dispatcher keeps a record, a history and index entries per
#: process, and the default collected every 700 allocations, walking the survivors again and
#: again: taking in 100,000 processes took 10.2 s with the defaults and 7.2 s with these
#: (bench/backlog.py). Likewise, what the store held at start is frozen once loaded, out of
#: every later collection's walk. Records hold no cycles: refcounting still frees them.
GC_THRESHOLDS = (50_000, 20, 100)


def default_home() -> Path:
    return Path(os.environ.get("CORRAL_HOME") or Path.home() / ".corral")


def parse_address(text: str, option: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise click.BadParameter(f"expected HOST:PORT, got {text!r}", param_hint=option)
    return host.strip("[]") or "127.0.0.1", int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refuse_remote(host: str, option: str, allowed: bool, remedy: str) -> None:
    """Without TLS the API, the queue and the agent port carry tokens in clear: off loopback
    only when asked."""
    if not allowed and not is_loopback(host):
        raise click.UsageError(
            f"{option} {host}: refusing to listen beyond loopback, where tokens would travel"
            f" unencrypted; {remedy}, or pass --allow-remote to do it anyway"
        )


_TLS_REMEDY = "serve over TLS (--tls, or --tls-cert and --tls-key)"


def agent_host(home: Path, asked: tuple[str, int] | None) -> str:
    """Where the agent port will listen: as asked, else where the last run's did (the
    runtime reopens it there, so agents find it), else loopback."""
    if asked is not None:
        return asked[0]
    try:
        remembered = (home / "agent_address").read_text().strip()
    except OSError:
        return "127.0.0.1"
    return remembered.rpartition(":")[0].strip("[]") or "127.0.0.1"


def refuse_root(config: Config) -> None:
    """Local agents run as this dispatcher's user: as root, an engine must say who its
    processes run as, or every one of them would be refused (see ``agent.identity``)."""
    refused = refusing_root(config)
    if refused:
        raise click.UsageError(
            f"engine {refused[0]!r}: this dispatcher runs as root, so its local agents do, and"
            ' they never run processes as root unless told: set run_as = "USER" (who its'
            " processes run as) or allow_root = true in its [[engines]] table"
        )


@click.command()
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=None,
    help="State directory (default $CORRAL_HOME, else ~/.corral).",
)
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    help="HOST:PORT of the HTTP API; port 0 picks a free one.",
)
@click.option(
    "--agent-listen",
    default=None,
    help="HOST:PORT agents dial (default: the last run's, else a free loopback port).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Engines file (default HOME/corral.toml if present).",
)
@click.option(
    "--store", "store_url", default=None, help="Store URL (default sqlite:///HOME/corral.db)."
)
@click.option(
    "--queue",
    "queue_listen",
    default=None,
    help="HOST:PORT to host the pipelines' shared event queue on (secret in HOME/queue_secret).",
)
@click.option(
    "--lease-duration",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Seconds the active dispatcher's lease lasts unrenewed, on a PostgreSQL store"
    " (default: the config's, else 3): how soon a standby takes over a dead one.",
)
@click.option(
    "--tls",
    "tls_self_signed",
    is_flag=True,
    help="Serve the API, the agent port and the queue over TLS with a self-signed certificate, made"
    " once in HOME (tls_certificate.pem: give it to remote clients).",
)
@click.option(
    "--tls-cert",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Serve the API, the agent port and the queue over TLS with this PEM certificate (chain).",
)
@click.option(
    "--tls-key",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The private key of --tls-cert (PEM), unless that file holds it.",
)
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Let --listen, --queue and --agent-listen bind beyond loopback without TLS (tokens"
    " travel unencrypted).",
)
@click.option(
    "--ui-host",
    "ui_hosts",
    multiple=True,
    metavar="NAME",
    help="A host name browsers reach the dashboard by, besides IP addresses and localhost "
    "(repeatable); requests for other names are refused.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def serve(
    home: Path | None,
    listen: str,
    agent_listen: str | None,
    config_path: Path | None,
    store_url: str | None,
    queue_listen: str | None,
    lease_duration: float | None,
    tls_self_signed: bool,
    tls_cert: Path | None,
    tls_key: Path | None,
    allow_remote: bool,
    ui_hosts: tuple[str, ...],
    log_level: str,
) -> None:
    """Run the dispatcher, its local nodes and its HTTP API until interrupted."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    home = (home or default_home()).expanduser().resolve()
    host, port = parse_address(listen, "--listen")
    agents = parse_address(agent_listen, "--agent-listen") if agent_listen else None
    queue = parse_address(queue_listen, "--queue") if queue_listen else None
    if tls_key is not None and tls_cert is None:
        raise click.UsageError("--tls-key needs --tls-cert (the certificate it is the key of)")
    if tls_self_signed and tls_cert is not None:
        raise click.UsageError("--tls makes its own certificate: give --tls or --tls-cert")
    remote_ok = allow_remote or tls_self_signed or tls_cert is not None
    refuse_remote(host, "--listen", remote_ok, _TLS_REMEDY)
    if queue is not None:
        refuse_remote(queue[0], "--queue", remote_ok, _TLS_REMEDY)
    where = "--agent-listen" if agents else f"the agent port of the last run ({home}/agent_address)"
    hosts = [host, agent_host(home, agents)]
    refuse_remote(hosts[1], where, remote_ok, _TLS_REMEDY)
    try:
        if config_path is None and (home / "corral.toml").exists():
            config_path = home / "corral.toml"
        config = load_config(config_path)
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        token = load_or_create_token(home / "token")
        readonly_token = load_or_create_token(home / "readonly_token")
        agent_token = load_or_create_token(home / "agent_token")
        tls = _server_tls(home, tls_self_signed, tls_cert, tls_key, hosts)
    except CorralError as exc:
        raise click.ClickException(exc.message) from None
    refuse_root(config)
    store_url = store_url or config.store
    settings = RuntimeSettings(
        home, config, agent_token, agents, store_url, queue_listen=queue, tls=tls
    )
    tokens = _Tokens(token, readonly_token, ui_hosts)
    gc.set_threshold(*GC_THRESHOLDS)
    if store_url is not None and supports_lease(store_url):
        duration = lease_duration or config.lease_duration
        code = eventloop.run(_serve_shared(settings, tokens, host, port, duration))
    else:
        code = eventloop.run(_serve(settings, tokens, host, port))
    sys.exit(code)


def _server_tls(
    home: Path, self_signed: bool, certfile: Path | None, keyfile: Path | None, hosts: list[str]
) -> ServerTLS | None:
    """The TLS the API and the agent port serve with, its certificate left in the home
    for local clients (None: plain TCP)."""
    published = home / CERTIFICATE_FILE
    if self_signed:
        keyfile = home / KEY_FILE
        if ensure_self_signed(published, keyfile, hosts):
            logging.getLogger("corral").warning(
                "made a self-signed certificate in %s: remote clients need it (--ca)", published
            )
        return ServerTLS.load(published, keyfile)
    if certfile is None:
        return None
    tls = ServerTLS.load(certfile.expanduser().resolve(), keyfile and keyfile.expanduser())
    replace_file(published, tls.certificate.encode(), 0o644)
    return tls


@dataclass(frozen=True)
class _Tokens:
    token: str
    readonly_token: str
    ui_hosts: tuple[str, ...]


def _app(tokens: _Tokens, service: Dispatcher | None, role: Role | None = None) -> FastAPI:
    return create_app(
        service,
        tokens.token,
        readonly_token=tokens.readonly_token,
        ui_hosts=tokens.ui_hosts,
        role=role,
    )


async def _open_api(app: FastAPI, host: str, port: int, tls: ServerTLS | None) -> APIServer | None:
    if tls is None:
        return await open_api_server(app, host, port)
    return await open_api_server(app, host, port, tls.certfile, tls.keyfile)


def _stop_on_signals(api: APIServer) -> None:
    """SIGTERM and SIGINT stop the API; the dispatcher is then closed, and a shared store's
    lease released, before the process exits."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, api.stop)


def _write_url(home: Path, url: str) -> None:
    # whole or not at all: a client reading it mid-write must not see half a URL
    replace_file(home / "url", (url + "\n").encode(), 0o644)
    logging.getLogger("corral").info(
        "API on %s, dashboard on %s/ui/; token in %s", url, url, home / "token"
    )


async def _serve_shared(
    settings: RuntimeSettings, tokens: _Tokens, host: str, port: int, lease_duration: float
) -> int:
    """One of several dispatchers of a PostgreSQL store: a standby until it holds the lease."""
    assert settings.store_url is not None
    try:
        # the schema is checked (a newer one refuses) and migrated before anything listens
        await asyncio.to_thread(lambda: open_store(str(settings.store_url)).close())
    except CorralError as exc:
        click.echo(f"error: {exc.message}", err=True)
        return 1
    app = _app(tokens, None, Role(active=False))
    api = await _open_api(app, host, port, settings.tls)
    if api is None:
        return 1
    _stop_on_signals(api)

    def on_active(dispatcher: Dispatcher) -> None:
        gc.freeze()  # what the store held is loaded: see GC_THRESHOLDS
        app.state.service = dispatcher

    def on_role(role: Role) -> None:
        if app.state.role == Role(active=False):
            # as with a single dispatcher, the address is written once the API serves as
            # what it is: active, or a standby that knows the active one
            _write_url(settings.home, api.url)
        app.state.role = role

    standby = Standby(settings, api.url, on_active, on_role, lease_duration=lease_duration)
    running = asyncio.get_running_loop().create_task(standby.run())
    await asyncio.wait({api.task, running}, return_when=asyncio.FIRST_COMPLETED)
    standby.stop()
    try:
        code = await running
    except CorralError as exc:  # another dispatcher holds this home
        click.echo(f"error: {exc.message}", err=True)
        code = 1
    api.stop()
    await api.task
    return code


async def _serve(settings: RuntimeSettings, tokens: _Tokens, host: str, port: int) -> int:
    runtime = Runtime(settings)
    try:
        dispatcher = await runtime.start()
    except CorralError as exc:
        click.echo(f"error: {exc.message}", err=True)
        await runtime.aclose()
        return 1
    gc.freeze()  # what the store held is loaded: see GC_THRESHOLDS
    app = _app(tokens, dispatcher)
    api = await _open_api(app, host, port, settings.tls)
    if api is None:
        await runtime.aclose()
        return 1
    _write_url(settings.home, api.url)
    _stop_on_signals(api)
    stopped = asyncio.get_running_loop().create_task(runtime.stopped.wait())
    await asyncio.wait({api.task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    api.stop()
    await api.task
    stopped.cancel()
    await runtime.aclose()
    return 1 if runtime.failure is not None else 0
