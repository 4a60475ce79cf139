"""The thin HTTP layer: routes, bearer auth, the error-to-status mapping, and OpenAPI.

Each route parses a request model, calls one method of :class:`DispatcherService` (the
Protocol this package declares and the dispatcher satisfies) and returns its result. Owns
the only mapping from ``corral.errors`` to HTTP statuses. Imports ``corral.errors`` and
its own modules only: never the dispatcher, store or core directly.
"""

from corral.api._service import DispatcherService
from corral.api.app import create_app

__all__ = ["DispatcherService", "create_app"]
