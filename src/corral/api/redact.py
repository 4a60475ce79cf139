"""What a read-only principal does not see: secrets in configurations and environments.

A read-only token may look at everything, but some of what the dispatcher holds opens
more than a look: a computation's secret lets its holder run code on the workers, and
environments and subscriber URLs often carry passwords. For a read-only caller, every
value of a process's ``configuration`` under a key that names a secret, every value of a
definition's ``executable.env`` and the credentials of subscriber URLs are replaced by
:data:`HIDDEN`. The API token sees documents as they are.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from corral.api.access import Principal

HIDDEN = "(hidden from the read-only token)"
_SECRET_KEY = re.compile(r"secret|token|passw|credential|private|api.?key|auth|cookie", re.I)


def _masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: HIDDEN if _SECRET_KEY.search(str(k)) else _masked(item) for k, item in value.items()
        }
    if isinstance(value, list):
        return [_masked(item) for item in value]
    return value


def _url(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def process(caller: Principal, doc: dict[str, Any]) -> dict[str, Any]:
    """A process document as ``caller`` may see it."""
    if caller.can_act:
        return doc
    shown = dict(doc)
    if isinstance(doc.get("configuration"), dict):
        shown["configuration"] = _masked(doc["configuration"])
    if isinstance(doc.get("subscribers"), list):
        shown["subscribers"] = [_url(str(url)) for url in doc["subscribers"]]
    return shown


def processes(caller: Principal, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return docs if caller.can_act else [process(caller, doc) for doc in docs]


def definition(caller: Principal, doc: dict[str, Any]) -> dict[str, Any]:
    """A definition document as ``caller`` may see it."""
    executable = doc.get("executable")
    if caller.can_act or not isinstance(executable, dict) or not executable.get("env"):
        return doc
    env = {name: HIDDEN for name in executable["env"]}
    return {**doc, "executable": {**executable, "env": env}}


def definitions(caller: Principal, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return docs if caller.can_act else [definition(caller, doc) for doc in docs]


async def events(
    caller: Principal, source: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[dict[str, Any]]:
    """State-change events with their process documents as ``caller`` may see them."""
    try:
        async for event in source:
            if isinstance(event.get("process"), dict):
                event = {**event, "process": process(caller, event["process"])}
            yield event
    finally:
        closer = getattr(source, "aclose", None)
        if closer is not None:
            await closer()
