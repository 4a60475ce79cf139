"""``corral node`` and ``corral engine``: the pool as the dispatcher sees it."""

from __future__ import annotations

import os
from pathlib import Path

import click

from corral.cli._context import CliFailure, Settings, pass_settings
from corral.cli.output import Format, emit, format_options, generic_table, nodes_table
from corral.errors import CorralError
from corral.secretfile import load_or_create_token, node_token


@click.group()
def node() -> None:
    """Nodes: the machines processes run on."""


@node.command("list")
@format_options
@pass_settings
def list_nodes(settings: Settings, fmt: Format) -> None:
    """List nodes, their health and their slots in use."""
    with settings.client() as client:
        emit(client.list_nodes(), fmt, nodes_table)


def _node_action(action: str, doc: str) -> None:
    @node.command(action, help=doc)
    @click.argument("node_id")
    @format_options
    @pass_settings
    def command(settings: Settings, fmt: Format, node_id: str) -> None:
        with settings.client() as client:
            emit([getattr(client, f"{action}_node")(node_id)], fmt, nodes_table)


_node_action("hold", "Keep NODE_ID but place nothing new on it.")
_node_action("drain", "Place nothing new on NODE_ID; retire it once its processes are done.")
_node_action("run", "Let NODE_ID take work again (undoes hold and drain).")
_node_action("kill", "Retire NODE_ID now; its processes follow their restart modes.")


@node.command("token")
@click.argument("node_id")
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=None,
    help="The dispatcher's state directory (default $CORRAL_HOME, else ~/.corral).",
)
def token(node_id: str, home: Path | None) -> None:
    """Print the agent token of NODE_ID, for an agent started by hand.

    Each node's agent proves its own node id: the token is derived from the dispatcher's
    agent secret (HOME/agent_token), so run this where the dispatcher runs, and give the
    agent the token with --token-file or CORRAL_AGENT_TOKEN. It lets its holder act as
    NODE_ID only.
    """
    home = (home or Path(os.environ.get("CORRAL_HOME") or Path.home() / ".corral")).expanduser()
    secret_file = home / "agent_token"
    if not secret_file.is_file():
        raise CliFailure(f"no agent secret in {home}: start corral serve there first")
    try:
        secret = load_or_create_token(secret_file)
    except CorralError as exc:
        raise CliFailure(exc.message) from None
    click.echo(node_token(secret, node_id))


@click.group()
def engine() -> None:
    """Execution engines: the kinds of node."""


@engine.command("list")
@format_options
@pass_settings
def list_engines(settings: Settings, fmt: Format) -> None:
    """List execution engines."""
    with settings.client() as client:
        emit(client.list_engines(), fmt, generic_table)
