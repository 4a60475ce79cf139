"""Rendering for the CLI, in one place: rich tables by default, ``--json`` or ``--yaml``.

Commands hand a result (plain dicts from the client) and a table builder to :func:`emit`;
``--json`` and ``--yaml`` print the result itself, so scripts see exactly the API's fields.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Literal, TypeVar

import click
import yaml
from rich.console import Console
from rich.table import Table

Format = Literal["table", "json", "yaml"]
F = TypeVar("F", bound=Callable[..., Any])

PROCESS_COLUMNS = ("upid", "state", "definition_id", "hostname", "engine", "pid", "starts")
DEFINITION_COLUMNS = ("definition_id", "definition_type", "exec", "argv", "name")
NODE_COLUMNS = (
    "node_id",
    "engine",
    "instance_type",
    "price",
    "state",
    "health",
    "hostname",
    "slots",
    "idle_behavior",
    "last_heard",
)
#: shorter headers where the field name is long; the rest are the field names upper-cased
HEADERS = {
    "definition_id": "DEFINITION",
    "definition_type": "TYPE",
    "idle_behavior": "IDLE",
    "last_heard": "HEARD",
    "instance_type": "TYPE",
}
#: ids are never folded over two lines; a reader copies them whole
IDS = frozenset({"upid", "definition_id", "node_id", "engine_id"})
#: the width tables get when printed into a pipe (wide enough never to wrap a row)
_PIPE_WIDTH = 1000


def format_options(command: F) -> F:
    """Add ``--json`` and ``--yaml`` to ``command``, which receives ``fmt: Format``."""

    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    @click.option("--yaml", "as_yaml", is_flag=True, help="Print YAML instead of a table.")
    @functools.wraps(command)
    def wrapper(*args: Any, as_json: bool, as_yaml: bool, **kwargs: Any) -> Any:
        if as_json and as_yaml:
            raise click.UsageError("--json and --yaml cannot be used together")
        fmt: Format = "json" if as_json else "yaml" if as_yaml else "table"
        return command(*args, fmt=fmt, **kwargs)

    return wrapper  # type: ignore[return-value]


def emit(result: Any, fmt: Format, table: Callable[[Any], Table | str] | None = None) -> None:
    """Print ``result``: through ``table`` by default, or as JSON/YAML."""
    if fmt == "json":
        click.echo(json.dumps(result, indent=2, default=str))
    elif fmt == "yaml" or table is None:
        click.echo(yaml.safe_dump(result, sort_keys=False, allow_unicode=True).rstrip())
    else:
        rendered = table(result)
        if isinstance(rendered, str):
            click.echo(rendered)
        else:
            _console().print(rendered)


def _console() -> Console:
    # Made per call, so rich writes to whatever sys.stdout is now (click's runner swaps it).
    # Into a pipe, rows stay whole for grep and awk instead of wrapping at 80 columns.
    piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(highlight=False, soft_wrap=False, width=_PIPE_WIDTH if piped else None)


def cell(key: str, value: Any) -> str:
    """One value as a table shows it: times readable, lists and maps compact."""
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if (key.endswith("_at") or key == "time") and isinstance(value, int | float):
        return datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")
    if key == "last_heard" and isinstance(value, int | float):
        return f"{value:.1f}s ago"
    if key == "argv" and isinstance(value, list):
        return " ".join(str(item) for item in value)
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def rows_table(rows: Iterable[Mapping[str, Any]], columns: Iterable[str]) -> Table:
    columns = tuple(columns)
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(HEADERS.get(column, column.upper()), no_wrap=column in IDS)
    for row in rows:
        table.add_row(*(cell(column, row.get(column)) for column in columns))
    return table


def detail_table(record: Mapping[str, Any]) -> Table:
    """A record as two columns, field and value."""
    table = Table(box=None, pad_edge=False, show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in record.items():
        if key == "executable" and isinstance(value, Mapping):
            for inner, inner_value in value.items():
                table.add_row(f"{key}.{inner}", cell(inner, inner_value))
        else:
            table.add_row(key, cell(key, value))
    return table


def processes_table(processes: list[dict[str, Any]]) -> Table:
    rows = []
    for process in processes:
        # the one sentence that says what is going on, whichever applies
        why = process.get("waiting_reason") or process.get("end_reason")
        rows.append({**process, "reason": why})
    return rows_table(rows, (*PROCESS_COLUMNS, "reason"))


def definitions_table(definitions: list[dict[str, Any]]) -> Table:
    rows = [{**d, **_executable_columns(d.get("executable"))} for d in definitions]
    return rows_table(rows, DEFINITION_COLUMNS)


def _executable_columns(executable: Any) -> dict[str, Any]:
    if not isinstance(executable, Mapping):
        return {}
    return {"exec": executable.get("exec"), "argv": executable.get("argv")}


def nodes_table(nodes: list[dict[str, Any]]) -> Table:
    rows = [
        {**node, "slots": f"{node.get('used', '?')}/{node.get('slots', '?')}"} for node in nodes
    ]
    return rows_table(rows, NODE_COLUMNS)


def generic_table(rows: list[dict[str, Any]]) -> Table:
    """A table whose columns are the keys of the rows, in first-seen order."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return rows_table(rows, columns)
