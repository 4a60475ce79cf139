"""Semantic checks of requests, beyond their shape: each failure names the field.

The HTTP layer already checked types; these checks need the dispatcher's knowledge (which
definitions and engines exist, which paths are executable) or apply to in-process callers.
"""

from __future__ import annotations

import json
import os
import shutil
import unicodedata
from collections.abc import Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

from corral.core.ids import DefinitionId, EngineId
from corral.core.model import (
    DEFINITION_TYPES,
    NO_RESOURCES,
    Definition,
    Executable,
    Resources,
)
from corral.core.process_states import QueueingMode, RestartMode
from corral.core.restart import RestartPolicy
from corral.errors import InvalidRequest

_E = TypeVar("_E", QueueingMode, RestartMode)


#: the longest id; ``api.schemas.Id`` says the same
MAX_ID = 200


def check_id(value: Any, field: str) -> str:
    """An id is a file name on the nodes and a word in the logs: no path separators, and
    no control characters, which would let a caller forge log lines or mangle a terminal."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{field} must be a non-empty string", field=field)
    if (
        len(value) > MAX_ID
        or any(c in value for c in "/\\")
        or any(unicodedata.category(c) == "Cc" for c in value)
        or value in (".", "..")
    ):
        raise InvalidRequest(
            f"{field} {value!r} is not a valid id: at most {MAX_ID} characters, no '/', '\\'"
            " or control characters",
            field=field,
        )
    return value


def definition(
    definition_id: str,
    definition_type: str,
    executable: Mapping[str, Any],
    name: str | None,
    description: str | None,
) -> Definition:
    check_id(definition_id, "definition_id")
    if definition_type not in DEFINITION_TYPES:
        raise InvalidRequest(
            f"definition_type {definition_type!r} is not supported; expected one of "
            f"{', '.join(DEFINITION_TYPES)}",
            field="definition_type",
        )
    return Definition(
        DefinitionId(definition_id), definition_type, _executable(executable), name, description
    )


def _executable(doc: Mapping[str, Any]) -> Executable:
    if not isinstance(doc, Mapping):
        raise InvalidRequest("executable must be an object with exec and argv", field="executable")
    unknown = set(doc) - {"exec", "argv", "env", "working_directory", "resources"}
    if unknown:
        key = sorted(unknown)[0]
        raise InvalidRequest(
            f"executable.{key} is not a known field; expected exec, argv, env,"
            " working_directory, resources",
            field=f"executable.{key}",
        )
    path = doc.get("exec")
    if not isinstance(path, str) or not path:
        raise InvalidRequest("executable.exec must be a non-empty path", field="executable.exec")
    argv = doc.get("argv", [])
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise InvalidRequest("executable.argv must be a list of strings", field="executable.argv")
    env = doc.get("env") or {}
    if not isinstance(env, Mapping) or not all(
        isinstance(k, str) and k and "=" not in k and isinstance(v, str) for k, v in env.items()
    ):
        raise InvalidRequest(
            "executable.env must map variable names (no '=') to strings", field="executable.env"
        )
    cwd = doc.get("working_directory")
    if cwd is not None and (not isinstance(cwd, str) or not os.path.isabs(cwd)):
        raise InvalidRequest(
            "executable.working_directory must be an absolute path",
            field="executable.working_directory",
        )
    _check_runnable(path)
    needs = resources(doc.get("resources"), "executable.resources")
    return Executable(path, tuple(argv), dict(env), cwd, needs)


def resources(value: Any, where: str) -> Resources:
    """``{"cpus": 2, "memory": 4096, "gpus": 1}`` (memory in MiB), each optional."""
    if value is None:
        return NO_RESOURCES
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"{where} must be an object of cpus, memory, gpus", field=where)
    for key, item in value.items():
        if key not in ("cpus", "memory", "gpus"):
            raise InvalidRequest(
                f"{where}.{key} is not a resource; expected cpus, memory (MiB), gpus",
                field=f"{where}.{key}",
            )
        whole = key != "cpus"
        if (
            isinstance(item, bool)
            or not isinstance(item, int if whole else int | float)
            or not item >= 0
        ):
            kind = "a whole number" if whole else "a number"
            raise InvalidRequest(f"{where}.{key} must be {kind} ≥ 0", field=f"{where}.{key}")
    return Resources.from_doc(value)


def _check_runnable(path: str) -> None:
    if os.path.isabs(path):
        if not os.path.isfile(path):
            raise InvalidRequest(f"executable.exec {path} does not exist", field="executable.exec")
        if not os.access(path, os.X_OK):
            raise InvalidRequest(
                f"executable.exec {path} is not executable (check its mode)",
                field="executable.exec",
            )
    elif shutil.which(path) is None:
        raise InvalidRequest(
            f"executable.exec {path!r} is not an absolute path and is not found on PATH",
            field="executable.exec",
        )


def queueing_mode(value: str | None) -> QueueingMode | None:
    return _enum(QueueingMode, value, "queueing_mode")


def restart_mode(value: str | None) -> RestartMode | None:
    return _enum(RestartMode, value, "restart_mode")


def _enum(kind: type[_E], value: str | None, field: str) -> _E | None:
    if value is None:
        return None
    try:
        return kind(value.upper() if isinstance(value, str) else value)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise InvalidRequest(
            f"{field} {value!r} is not valid; expected one of {allowed}", field=field
        ) from None


def configuration(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidRequest("configuration must be an object", field="configuration")
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(
            f"configuration must be plain JSON: {exc}", field="configuration"
        ) from exc
    RestartPolicy.from_configuration(value)
    corral = value.get("corral")
    if isinstance(corral, Mapping):
        resources(corral.get("resources"), "configuration.corral.resources")
    return dict(value)


def constraints(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidRequest("constraints must be an object", field="constraints")
    scalar = (str, int, float, bool)
    for key, wanted in value.items():
        ok = isinstance(wanted, scalar) or (
            isinstance(wanted, list) and wanted and all(isinstance(v, scalar) for v in wanted)
        )
        if not ok:
            raise InvalidRequest(
                f"constraints.{key} must be a value or a non-empty list of values",
                field=f"constraints.{key}",
            )
    return dict(value)


def subscribers(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidRequest("subscribers must be a list of URLs", field="subscribers")
    for i, url in enumerate(value):
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidRequest(
                f"subscribers[{i}] must be an http:// or https:// URL", field=f"subscribers[{i}]"
            )
    return tuple(value)


def engine(value: str | None, known: Mapping[EngineId, Any]) -> EngineId | None:
    if value is None:
        return None
    if value not in known:
        raise InvalidRequest(
            f"execution_engine_id {value!r} is not an engine; known: {', '.join(known)}",
            field="execution_engine_id",
        )
    return EngineId(value)
