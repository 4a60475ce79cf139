"""``corral audit``: who did what, newest first (the dispatcher's audit log)."""

from __future__ import annotations

import click

from corral.cli._context import Settings, pass_settings
from corral.cli.output import Format, emit, format_options, rows_table

AUDIT_COLUMNS = ("id", "time", "actor", "action", "target", "detail")


@click.command()
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="At most this many entries.")  # fmt: skip
@click.option("--before", type=click.IntRange(min=1), metavar="ID",
              help="Entries older than this id (the last id of the page before).")  # fmt: skip
@click.option("--target", metavar="ID", help="Only the entries about this process, node or "
              "definition.")  # fmt: skip
@format_options
@pass_settings
def audit(
    settings: Settings, limit: int, before: int | None, target: str | None, fmt: Format
) -> None:
    """Show operators' actions, newest first: who, from where, what, on which target."""
    with settings.client() as client:
        emit(
            client.audit_log(limit, before, target),
            fmt,
            lambda page: rows_table(page["entries"], AUDIT_COLUMNS),
        )
