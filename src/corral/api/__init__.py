"""The thin HTTP layer: routes, auth, the error-to-status mapping, OpenAPI, the dashboard.

Each route parses a request model, calls one method of :class:`DispatcherService` (the
Protocol this package declares and the dispatcher satisfies) and returns its result. Owns
the only mapping from ``corral.errors`` to HTTP statuses, who may do what (tokens, roles,
dashboard sessions, CSRF, Host and Origin checks), and the dashboard's static files
(``ui/``). Imports ``corral.errors`` and its own modules only: never the dispatcher, store
or core directly.
"""

from corral.api._service import DispatcherService
from corral.api.app import create_app

__all__ = ["DispatcherService", "create_app"]
