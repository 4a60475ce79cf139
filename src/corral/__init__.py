"""corral: run service-like processes and batch jobs on an elastic pool of nodes.

The public surface is the HTTP clients, the error tree and the version; everything else is
reached through its subpackage. ``Client`` and ``AsyncClient`` are imported on first use,
so ``import corral.core`` or the node agent does not pay for httpx.
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING, Any

from corral.errors import (
    Conflict,
    CorralError,
    Forbidden,
    IllegalTransition,
    InvalidRequest,
    NotFound,
    StoreError,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)

if TYPE_CHECKING:
    from corral.client import AsyncClient, Client

try:
    __version__ = metadata.version("corral")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "AsyncClient",
    "Client",
    "Conflict",
    "CorralError",
    "Forbidden",
    "IllegalTransition",
    "InvalidRequest",
    "NotFound",
    "StoreError",
    "Unauthorized",
    "Unavailable",
    "WaitTimeout",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in ("Client", "AsyncClient"):
        from corral import client

        return getattr(client, name)
    raise AttributeError(f"module 'corral' has no attribute {name!r}")
