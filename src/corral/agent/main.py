"""``python -m corral.agent``: parse the command line, lock the state directory, run the agent.

Exit codes: 0 after a Shutdown or on SIGTERM/SIGINT, 2 for a usage error or a state directory
another agent holds, 3 when the dispatcher refuses the agent (a wrong token must not loop).

Processes run as ``--run-as USER`` (the agent must be root to switch), else as the agent's
own user, but never as root unless ``--allow-root`` says so: a root agent told neither
refuses every launch, saying why (see ``identity``).

SIGTERM and SIGINT stop the agent but NOT its processes, so an operator can restart or
upgrade the agent under a running workload; the new agent adopts the processes recorded in
its state directory. To stop the processes too, the dispatcher sends Shutdown (or, once the
agent is gone, ``corral.agent.launcher.kill_orphans`` cleans up).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from corral import eventloop
from corral.agent.dialing import parse_address
from corral.agent.identity import Identity, Refuse, RunAs, resolve
from corral.agent.logs import DEFAULT_MAX_BYTES, DEFAULT_RETENTION
from corral.agent.pidfiles import (
    StateDirBusy,
    lock_state_dir,
    prepare_state_dir,
    private_runtime_root,
)
from corral.agent.session import EXIT_USAGE, Agent, AgentConfig
from corral.errors import InvalidRequest
from corral.tls import read_certificates, trusting

TOKEN_ENV = "CORRAL_AGENT_TOKEN"

log = logging.getLogger("corral.agent")


def _addresses(text: str) -> tuple[tuple[str, int], ...]:
    found = []
    for item in text.split(","):
        address = parse_address(item.strip())
        if address is None:
            raise argparse.ArgumentTypeError(f"expected HOST:PORT[,HOST:PORT...], got {text!r}")
        found.append(address)
    return tuple(found)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds ≥ 0, got {text!r}")
    return value


def _bytes(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number of bytes ≥ 0, got {text!r}")
    return int(text)


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m corral.agent",
        description="corral node agent: dials the dispatcher and runs the processes it sends.",
        epilog="SIGTERM/SIGINT stop the agent but leave its processes running.",
    )
    default_state = Path(os.environ.get("XDG_STATE_HOME", "~/.local/state")) / "corral/agent"
    hostname = socket.gethostname()
    add = parser.add_argument
    add(
        "--dispatcher",
        type=_addresses,
        required=True,
        metavar="HOST:PORT[,HOST:PORT...]",
        help="every dispatcher of the store, comma-separated: the agent follows the active one",
    )
    add("--token-file", type=Path, help=f"file holding the token (else ${TOKEN_ENV})")
    add(
        "--tls-ca",
        type=Path,
        default=None,
        metavar="FILE",
        help="dial over TLS, trusting exactly the certificates in FILE (PEM): the dispatchers'"
        " own, whatever address reaches them (default: plain TCP)",
    )
    add("--node-id", default=hostname, help="default: the host name")
    add("--engine", default="default", help="execution engine id this node serves")
    add("--slots", type=int, default=os.cpu_count() or 1, help="default: number of CPUs")
    add("--label", type=_label, action="append", default=[], metavar="KEY=VALUE")
    add("--hostname", default=hostname)
    add("--state-dir", type=Path, default=default_state)
    add(
        "--runtime-dir",
        type=Path,
        default=None,
        help="tmpfs directory for pid records and configuration files "
        "(default: under $XDG_RUNTIME_DIR or /dev/shm; '' keeps them in the state dir)",
    )
    add("--heartbeat-period", type=float, default=1.0, help="seconds; Welcome overrides it")
    add("--run-as", default=None, metavar="USER", help="run processes as USER (needs root)")
    add(
        "--allow-root",
        action="store_true",
        help="let processes run as root when the agent is root and --run-as is not given",
    )
    add(
        "--stop-after-disconnect",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="stop the processes after this long without a dispatcher (default: never)",
    )
    add(
        "--stop-grace",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="between SIGTERM and SIGKILL when stopping them so (default: 10)",
    )
    add(
        "--link-timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="unacknowledged heartbeats after which the link counts as gone (default: 30)",
    )
    add(
        "--log-max-bytes",
        type=_bytes,
        default=DEFAULT_MAX_BYTES,
        metavar="BYTES",
        help="the newest bytes each process's stdout and stderr log keeps; older ones are"
        f" dropped (0: keep all; default: {DEFAULT_MAX_BYTES})",
    )
    add(
        "--log-retention",
        type=_seconds,
        default=DEFAULT_RETENTION,
        metavar="SECONDS",
        help="the logs of a process that no longer runs here are removed once unwritten this"
        f" long (0: never; default: {DEFAULT_RETENTION})",
    )
    add("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def _read_token(parser: argparse.ArgumentParser, token_file: Path | None) -> str:
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            parser.error(f"cannot read the token file: {exc}")
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        parser.error(f"no token: give --token-file or set {TOKEN_ENV}")
    return token


def _runtime_dir(asked: Path | None, state_dir: Path) -> Path | None:
    if asked is not None:
        return asked.expanduser().resolve() if str(asked) else None
    for base in (os.environ.get("XDG_RUNTIME_DIR"), "/dev/shm"):
        root = private_runtime_root(Path(base)) if base and os.path.isdir(base) else None
        if root is not None:
            # One directory per state dir: two agents of one host never share it.
            return root / hashlib.sha256(str(state_dir).encode()).hexdigest()[:16]
    return None


def _identity(run_as: str | None, allow_root: bool, state_dir: Path) -> Identity | None:
    identity = resolve(run_as, allow_root)
    if isinstance(identity, RunAs):
        try:
            identity.config_dir(state_dir)
        except OSError as exc:
            identity = Refuse(f"cannot run processes as {identity.name}: {exc.strerror}")
    if isinstance(identity, Refuse):
        log.error("%s: every launch will fail", identity.reason)
    elif isinstance(identity, RunAs):
        log.info("processes run as %s (uid %d)", identity.name, identity.uid)
    return identity


def main(argv: Sequence[str] | None = None) -> int:
    """Run the agent until it is shut down, refused or signalled; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s",
    )
    token = _read_token(parser, args.token_file)
    tls = None
    if args.tls_ca is not None:
        try:
            # A pin: the dispatcher hands its agents its own certificate, so any address
            # that reaches it will do.
            tls = trusting(read_certificates(args.tls_ca, "--tls-ca"), check_hostname=False)
        except InvalidRequest as exc:
            parser.error(exc.message)
    if args.slots < 0:
        parser.error("--slots must not be negative")
    state_dir = args.state_dir.expanduser().resolve()
    try:
        lock = lock_state_dir(state_dir)
    except StateDirBusy as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    try:
        prepare_state_dir(state_dir, _runtime_dir(args.runtime_dir, state_dir))
        # The processes inherit the agent's environment, but never its credentials.
        environ = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
        identity = _identity(args.run_as, args.allow_root, state_dir)
        if isinstance(identity, RunAs):
            environ = identity.environ(environ)
        config = AgentConfig(
            dispatchers=args.dispatcher,
            token=token,
            node_id=args.node_id,
            engine=args.engine,
            hostname=args.hostname,
            slots=args.slots,
            labels=dict(args.label),
            state_dir=state_dir,
            heartbeat_period=args.heartbeat_period,
            environ=environ,
            identity=identity,
            stop_after_disconnect=args.stop_after_disconnect,
            stop_grace=args.stop_grace,
            link_timeout=args.link_timeout,
            tls=tls,
            log_max_bytes=args.log_max_bytes,
            log_retention=args.log_retention,
        )
        log.info("agent %s starting; state in %s", config.node_id, state_dir)
        return eventloop.run(Agent(config).run())
    finally:
        os.close(lock)
