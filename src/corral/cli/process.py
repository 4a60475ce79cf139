"""``corral process``: schedule, describe, list, kill, restart, wait for, dump, logs and
history."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import click

from corral.cli._context import CliFailure, Settings, TimedOut, failure, pass_settings
from corral.cli._files import (
    executable_from_options,
    normalized,
    parse_configuration,
    parse_constraints,
    same_definition,
)
from corral.cli.output import (
    Format,
    detail_table,
    emit,
    format_options,
    processes_table,
    rows_table,
)
from corral.client import Client
from corral.errors import Conflict, CorralError, NotFound, WaitTimeout

QUEUEING_MODES = ("NEVER", "ALWAYS", "START_ONLY", "RESTART_ONLY")
RESTART_MODES = ("NEVER", "ALWAYS", "ABNORMAL")
# States arrive as the API's strings ("850-FAILED"); the CLI talks to the API only and does
# not import corral.core, so the few names it needs are spelled here.
TERMINAL = frozenset({"TERMINATED", "EXITED", "FAILED", "REJECTED"})
UNSUCCESSFUL = frozenset({"FAILED", "REJECTED"})


def state_name(state: Any) -> str:
    """``"850-FAILED"`` → ``"FAILED"``."""
    return str(state).rpartition("-")[2].upper()


def _state_line(process: dict[str, Any]) -> str:
    return f"{process.get('upid')} {process.get('state')}"


@click.group()
def process() -> None:
    """Processes: schedule them, watch them, stop them."""


@process.command()
@click.argument("upid")
@click.argument("definition_id", required=False)
@click.option(
    "--exec", "exec_", metavar="PATH", help="Shortcut: run PATH (a definition named UPID)."
)
@click.option("--arg", "args", multiple=True, help="With --exec: an argument (repeatable).")
@click.option("--env", multiple=True, metavar="KEY=VALUE", help="With --exec: an env variable.")
@click.option("--cwd", metavar="DIR", help="With --exec: the working directory.")
@click.option("--configuration", metavar="JSON|@FILE", help="Configuration for the process.")
@click.option("--constraint", "constraints", multiple=True, metavar="KEY=VALUE",
              help="A node label to match (repeat a key to allow several values).")  # fmt: skip
@click.option(
    "--queueing-mode",
    type=click.Choice(QUEUEING_MODES, case_sensitive=False),
    metavar="MODE",
    help=f"When it may wait for a slot: {', '.join(QUEUEING_MODES)}.",
)
@click.option(
    "--restart-mode",
    type=click.Choice(RESTART_MODES, case_sensitive=False),
    metavar="MODE",
    help=f"When it is started again: {', '.join(RESTART_MODES)}.",
)
@click.option("--engine", "execution_engine_id", help="The execution engine to run on.")
@click.option("--node-exclusive", metavar="TAG", help="At most one process with TAG per node.")
@click.option("--subscriber", "subscribers", multiple=True, help="A subscriber (repeatable).")
@click.option("--name", help="A human-readable name.")
@click.option(
    "--request-id",
    metavar="ID",
    help="Names this call: run again with the same ID (say, after a lost answer), it does "
    "not run a process that ended since a second time.",
)
@click.option("--wait", "wait_state", metavar="STATE", help="Then wait for STATE (or an end).")
@click.option(
    "--timeout", type=float, default=60.0, show_default=True, help="Seconds --wait waits."
)
@format_options
@pass_settings
def schedule(
    settings: Settings,
    /,
    upid: str,
    definition_id: str | None,
    exec_: str | None,
    args: tuple[str, ...],
    env: tuple[str, ...],
    cwd: str | None,
    configuration: str | None,
    constraints: tuple[str, ...],
    subscribers: tuple[str, ...],
    wait_state: str | None,
    timeout: float,
    fmt: Format,
    **options: str | None,
) -> None:
    """Schedule process UPID from DEFINITION_ID, or from --exec PATH directly.

    A process that exists needs neither: scheduled again once it has ended, it runs again.
    """
    if exec_ and definition_id:
        raise click.UsageError("give DEFINITION_ID or --exec, not both")
    if not exec_ and (args or env or cwd):
        raise click.UsageError("--arg, --env and --cwd go with --exec")
    # every option is parsed before the first request, so a typo changes nothing remotely
    parsed_configuration = parse_configuration(configuration) if configuration else None
    parsed_constraints = parse_constraints(constraints) or None
    executable = executable_from_options(exec_, args, env, cwd) if exec_ else None
    with settings.client() as client:
        if executable is not None:
            definition_id = upid
            _ensure_definition(client, upid, executable)
        result = client.schedule_process(
            upid,
            definition_id=definition_id,
            configuration=parsed_configuration,
            subscribers=list(subscribers) or None,
            constraints=parsed_constraints,
            **options,
        )
        if wait_state:
            result = _wait(client, upid, [wait_state], timeout)
    emit(result, fmt, _state_line)
    _check_outcome(result)


def _ensure_definition(client: Client, definition_id: str, executable: dict[str, Any]) -> None:
    """Create the shortcut's definition, or reuse it if it is identical."""
    wanted = normalized({"definition_id": definition_id, "executable": executable})
    try:
        existing = client.describe_definition(definition_id)
    except NotFound:
        client.create_definition(**wanted)
        return
    if not same_definition(wanted, existing):
        raise Conflict(
            f"definition {definition_id} already exists with another executable; choose "
            f"another UPID, or change it with `corral definition update {definition_id}`",
            field="definition_id",
        )


def _wait(client: Client, upid: str, states: list[str] | None, timeout: float) -> dict[str, Any]:
    try:
        return client.wait_process(upid, states, timeout)
    except WaitTimeout as exc:
        message = failure(exc).format_message()
    # say where it got stuck, which is what the user will ask next
    with contextlib.suppress(CorralError):
        now = client.describe_process(upid)
        why = now.get("waiting_reason")
        message += f"; it is {now.get('state')}" + (f" ({why})" if why else "")
    raise TimedOut(f"timed out: {message}")


def _check_outcome(process: dict[str, Any]) -> None:
    if state_name(process.get("state")) in UNSUCCESSFUL:
        reason = process.get("end_reason") or process.get("waiting_reason") or "no reason given"
        raise CliFailure(f"process {process.get('upid')} ended {process.get('state')}: {reason}")


@process.command()
@click.argument("upid")
@click.option("--state", "states", multiple=True, help="A state to wait for (repeatable).")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait.")
@format_options
@pass_settings
def wait(
    settings: Settings, upid: str, states: tuple[str, ...], timeout: float, fmt: Format
) -> None:
    """Wait until UPID is in one of --state (default: until it ends); print its state.

    Exits 1 if the process ends FAILED or REJECTED, and 124 if the wait times out.
    """
    with settings.client() as client:
        result = _wait(client, upid, list(states) or None, timeout)
    emit(result, fmt, lambda p: str(p.get("state")))
    _check_outcome(result)


@process.command()
@click.argument("upid")
@format_options
@pass_settings
def describe(settings: Settings, upid: str, fmt: Format) -> None:
    """Show one process."""
    with settings.client() as client:
        emit(client.describe_process(upid), fmt, detail_table)


@process.command("list")
@format_options
@pass_settings
def list_(settings: Settings, fmt: Format) -> None:
    """List processes."""
    with settings.client() as client:
        emit(client.describe_processes(), fmt, processes_table)


@process.command()
@click.argument("upid")
@format_options
@pass_settings
def kill(settings: Settings, upid: str, fmt: Format) -> None:
    """Terminate a process (terminate_process)."""
    with settings.client() as client:
        emit(client.terminate_process(upid), fmt, _state_line)


@process.command()
@click.argument("upid")
@format_options
@pass_settings
def restart(settings: Settings, upid: str, fmt: Format) -> None:
    """Restart a process in a new round."""
    with settings.client() as client:
        emit(client.restart_process(upid), fmt, _state_line)


@process.command()
@click.argument("upid")
@format_options
@pass_settings
def history(settings: Settings, upid: str, fmt: Format) -> None:
    """Show a process's last state changes, oldest first."""
    with settings.client() as client:
        emit(
            client.process_history(upid),
            fmt,
            lambda found: rows_table(found["steps"], ("time", "round", "state", "detail")),
        )


@process.command()
@format_options
@pass_settings
def dump(settings: Settings, fmt: Format) -> None:
    """Print the dispatcher's debugging dump (YAML unless --json)."""
    with settings.client() as client:
        emit(client.dump(), fmt)


@process.command()
@click.argument("upid")
@click.option("--stderr", "use_stderr", is_flag=True, help="Print stderr instead of stdout.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the process ends.")
@click.option("--interval", type=float, default=0.5, hidden=True, help="Seconds between polls.")
@pass_settings
def logs(settings: Settings, upid: str, use_stderr: bool, follow: bool, interval: float) -> None:
    """Print a process's stdout (or stderr); with -f, follow it until the process ends."""
    stream = "stderr" if use_stderr else "stdout"
    # Ctrl-C is how a user stops following; it is not an error
    with settings.client() as client, contextlib.suppress(KeyboardInterrupt):
        _print_log(client, upid, stream, follow, interval)


def _print_log(client: Client, upid: str, stream: str, follow: bool, interval: float) -> None:
    offset, ended = 0, False
    while True:
        chunk = client.read_log(upid, stream, offset)
        data = chunk.get("data") or ""
        if data:
            click.echo(data, nl=False)
        next_offset = int(chunk.get("next_offset", offset + len(data)))
        if not data and next_offset > offset:
            click.echo(
                f"corral: the first {next_offset:,} bytes of this log were dropped"
                " (the engine's log_max_bytes)",
                err=True,
            )
        skipped, offset = next_offset > offset, next_offset
        if data or skipped:
            continue  # there may be more right away
        if not follow or ended:
            return
        # checked before the next read, so output written just before the end is not lost
        ended = state_name(client.describe_process(upid).get("state")) in TERMINAL
        if not ended:
            time.sleep(interval)
