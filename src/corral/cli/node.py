"""``corral node`` and ``corral engine``: the pool as the dispatcher sees it."""

from __future__ import annotations

import click

from corral.cli._context import Settings, pass_settings
from corral.cli.output import Format, emit, format_options, generic_table, nodes_table


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
