"""``corral definition``: create, update, sync, describe, remove and list definitions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from corral.cli._context import CliFailure, Settings, failure, pass_settings
from corral.cli._files import (
    executable_from_options,
    files_under,
    load_documents,
    normalized,
    same_definition,
)
from corral.cli.output import (
    Format,
    definitions_table,
    detail_table,
    emit,
    format_options,
    rows_table,
)
from corral.client import Client
from corral.errors import Conflict, CorralError, InvalidRequest, NotFound


@click.group()
def definition() -> None:
    """Process definitions: what a process runs."""


def _definition_options(command: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--exec", "exec_", metavar="PATH", help="The program to run."),
        click.option("--arg", "args", multiple=True, help="An argument (repeatable, in order)."),
        click.option("--env", multiple=True, metavar="KEY=VALUE", help="An environment variable."),
        click.option("--cwd", metavar="DIR", help="The working directory."),
        click.option(
            "--type",
            "definition_type",
            type=click.Choice(["supd", "exec"]),
            help="Definition type (default: supd).",
        ),
        click.option("--name", help="A human-readable name."),
        click.option("--description", help="A description."),
        click.option(
            "--file",
            "file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="Read the definition from a YAML or JSON file instead.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


_FLAG = {
    "exec_": "--exec",
    "args": "--arg",
    "env": "--env",
    "cwd": "--cwd",
    "definition_type": "--type",
    "name": "--name",
    "description": "--description",
}


def _definition_from(definition_id: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """The create/update_definition arguments, from the options or from ``--file``."""
    file: Path | None = options.pop("file")
    if file is not None:
        given = sorted(_FLAG[key] for key, value in options.items() if value)
        if given:
            raise click.UsageError(f"--file cannot be combined with {', '.join(given)}")
        docs = load_documents(file)
        if len(docs) != 1:
            raise click.UsageError(f"{file} holds {len(docs)} definitions; use `definition sync`")
        doc = docs[0]
        if definition_id and doc.get("definition_id", definition_id) != definition_id:
            raise click.UsageError(
                f"{file} defines {doc['definition_id']!r}, not {definition_id!r}"
            )
        doc.setdefault("definition_id", definition_id)
        if not doc["definition_id"]:
            raise click.UsageError("give DEFINITION_ID, or a definition_id in the file")
        return normalized(doc)
    if not definition_id:
        raise click.UsageError("Missing argument 'DEFINITION_ID'.")
    if not options["exec_"]:
        raise click.UsageError("Missing option '--exec' (or give --file).")
    executable = executable_from_options(
        options["exec_"], options["args"], options["env"], options["cwd"]
    )
    return normalized(
        {
            "definition_id": definition_id,
            "definition_type": options["definition_type"],
            "executable": executable,
            "name": options["name"],
            "description": options["description"],
        }
    )


@definition.command()
@click.argument("definition_id", required=False)
@_definition_options
@format_options
@pass_settings
def create(settings: Settings, /, definition_id: str | None, fmt: Format, **options: Any) -> None:
    """Create definition DEFINITION_ID from --exec and friends, or from --file."""
    doc = _definition_from(definition_id, options)
    with settings.client() as client:
        result = client.create_definition(**doc)
    emit(
        result, fmt, lambda d: f"created definition {d.get('definition_id', doc['definition_id'])}"
    )


@definition.command()
@click.argument("definition_id", required=False)
@_definition_options
@format_options
@pass_settings
def update(settings: Settings, /, definition_id: str | None, fmt: Format, **options: Any) -> None:
    """Replace definition DEFINITION_ID (same options as create)."""
    doc = _definition_from(definition_id, options)
    with settings.client() as client:
        result = client.update_definition(**doc)
    emit(
        result, fmt, lambda d: f"updated definition {d.get('definition_id', doc['definition_id'])}"
    )


@definition.command()
@click.argument("definition_id")
@format_options
@pass_settings
def describe(settings: Settings, definition_id: str, fmt: Format) -> None:
    """Show one definition."""
    with settings.client() as client:
        emit(client.describe_definition(definition_id), fmt, detail_table)


@definition.command()
@click.argument("definition_id")
@pass_settings
def remove(settings: Settings, definition_id: str) -> None:
    """Remove a definition (refused while a process uses it)."""
    with settings.client() as client:
        client.remove_definition(definition_id)
    click.echo(f"removed definition {definition_id}")


@definition.command("list")
@format_options
@pass_settings
def list_(settings: Settings, fmt: Format) -> None:
    """List definitions."""
    with settings.client() as client:
        emit(client.list_definitions(), fmt, definitions_table)


@definition.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--prune", is_flag=True, help="Remove definitions not found in the files.")
@format_options
@pass_settings
def sync(settings: Settings, paths: tuple[Path, ...], prune: bool, fmt: Format) -> None:
    """Create or update the definitions in FILE_OR_DIR... (YAML or JSON).

    Each file holds one definition or a list of them; directories are searched for
    *.yaml, *.yml and *.json. Prints what was created, updated or left unchanged.
    """
    wanted = _collect(paths)
    report: list[dict[str, Any]] = []
    with settings.client() as client:
        for definition_id, (doc, _path) in wanted.items():
            action, detail = _sync_one(client, doc)
            report.append({"definition_id": definition_id, "action": action, "detail": detail})
        if prune:
            report.extend(_prune(client, set(wanted)))
    emit(report, fmt, lambda rows: rows_table(rows, ("definition_id", "action", "detail")))
    failed = sum(1 for row in report if row["action"] == "failed")
    if failed:
        raise CliFailure(f"{failed} definition(s) failed to sync")


def _collect(paths: tuple[Path, ...]) -> dict[str, tuple[dict[str, Any], Path]]:
    wanted: dict[str, tuple[dict[str, Any], Path]] = {}
    for path in files_under(paths):
        for doc in load_documents(path):
            definition_id = doc.get("definition_id")
            if not definition_id:
                raise InvalidRequest(f"{path}: definition_id is missing", field="definition_id")
            if definition_id in wanted:
                first = wanted[definition_id][1]
                raise InvalidRequest(f"definition {definition_id} is in both {first} and {path}")
            wanted[definition_id] = (normalized(doc), path)
    return wanted


def _sync_one(client: Client, doc: dict[str, Any]) -> tuple[str, str | None]:
    try:
        try:
            remote = client.describe_definition(doc["definition_id"])
        except NotFound:
            client.create_definition(**doc)
            return "created", None
        if same_definition(doc, remote):
            return "unchanged", None
        client.update_definition(**doc)
        return "updated", None
    except CorralError as exc:
        # keep going: one bad file should not hide what happened to the others
        return "failed", failure(exc).format_message()


def _prune(client: Client, keep: set[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for remote in client.list_definitions():
        definition_id = remote["definition_id"]
        if definition_id in keep:
            continue
        try:
            client.remove_definition(definition_id)
            rows.append({"definition_id": definition_id, "action": "removed", "detail": None})
        except Conflict as exc:
            rows.append({"definition_id": definition_id, "action": "kept", "detail": exc.message})
    return rows
