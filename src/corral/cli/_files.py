"""Definition files and the executable options the definition and process commands share.

A definition file is YAML or JSON (JSON is YAML, so one loader reads both) holding one
definition mapping or a list of them, with ``create_definition``'s field names.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import click
import yaml

from corral.errors import InvalidRequest

SUFFIXES = (".yaml", ".yml", ".json")
FIELDS = ("definition_id", "definition_type", "executable", "name", "description")


def load_documents(path: Path) -> list[dict[str, Any]]:
    """The definitions in one file."""
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidRequest(f"cannot read {path}: {exc}") from None
    docs = loaded if isinstance(loaded, list) else [loaded]
    for index, doc in enumerate(docs):
        where = f"{path}" if len(docs) == 1 else f"{path} (item {index})"
        if not isinstance(doc, dict):
            raise InvalidRequest(f"{where}: a definition must be a mapping")
        unknown = sorted(set(doc) - set(FIELDS))
        if unknown:
            raise InvalidRequest(f"{where}: unknown fields {', '.join(unknown)}", field=unknown[0])
        if "definition_id" in doc and not isinstance(doc["definition_id"], str):
            raise InvalidRequest(f"{where}: definition_id must be a string", field="definition_id")
    return docs


def files_under(paths: Iterable[Path]) -> Iterator[Path]:
    """Each file given, and the definition files found under each directory, sorted."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        else:
            yield path


def normalized(doc: dict[str, Any]) -> dict[str, Any]:
    """A definition with the defaults filled in, to compare a file with the server."""
    executable = doc.get("executable") or {}
    if not isinstance(executable, dict):
        raise InvalidRequest("executable must be a mapping", field="executable")
    return {
        "definition_id": doc.get("definition_id"),
        "definition_type": doc.get("definition_type") or "supd",
        "executable": {
            "exec": executable.get("exec"),
            "argv": list(executable.get("argv") or []),
            "env": dict(executable.get("env") or {}),
            "working_directory": executable.get("working_directory"),
        },
        "name": doc.get("name"),
        "description": doc.get("description"),
    }


def same_definition(local: dict[str, Any], remote: dict[str, Any]) -> bool:
    return normalized(local) == normalized(remote)


def executable_from_options(
    exec_: str, args: Iterable[str], env: Iterable[str], cwd: str | None
) -> dict[str, Any]:
    return {
        "exec": exec_,
        "argv": list(args),
        "env": parse_pairs(env, "--env"),
        "working_directory": cwd,
    }


def parse_pairs(pairs: Iterable[str], option: str) -> dict[str, str]:
    return dict(_pairs(pairs, option))


def parse_constraints(pairs: Iterable[str]) -> dict[str, Any]:
    """``k=v`` pairs; a key given twice allows any of its values (a list)."""
    constraints: dict[str, Any] = {}
    for key, value in _pairs(pairs, "--constraint"):
        if key in constraints:
            previous = constraints[key]
            constraints[key] = [*(previous if isinstance(previous, list) else [previous]), value]
        else:
            constraints[key] = value
    return constraints


def _pairs(pairs: Iterable[str], option: str) -> Iterator[tuple[str, str]]:
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint=option)
        yield key, value


def parse_configuration(text: str) -> dict[str, Any]:
    """``--configuration``: inline JSON, or ``@file`` holding JSON or YAML."""
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            loaded = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise click.BadParameter(
                f"cannot read {path}: {exc}", param_hint="--configuration"
            ) from None
    else:
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--configuration") from None
    if not isinstance(loaded, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--configuration")
    return loaded
