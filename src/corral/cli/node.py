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
