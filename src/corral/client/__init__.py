"""The Python clients of the dispatcher's HTTP API: :class:`Client` and :class:`AsyncClient`.

Owns URL and token discovery, request building and the decoding of error bodies back into
``corral.errors`` classes. Imports ``corral.errors`` and httpx only, never the dispatcher,
so it installs and imports light wherever a user drives corral from.
"""

from corral.client.aio import AsyncClient
from corral.client.sync import Client

__all__ = ["AsyncClient", "Client"]
