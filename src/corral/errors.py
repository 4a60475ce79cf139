"""The corral exception tree, shared by the dispatcher, the client and the CLI.

Errors are classified by what the caller should do, not by where they arose::

    CorralError
     ├── InvalidRequest        the request is wrong: fix the named field and retry
     ├── NotFound              the named object does not exist
     ├── Conflict              the request contradicts the current state (same id, other
     │                         parameters; a definition still in use)
     ├── Unauthorized          no token, or a wrong one
     ├── WaitTimeout           a wait ran out of time before the condition held
     ├── Unavailable           the dispatcher cannot be reached or is shutting down: retry later
     │    └── StoreFull        the store's disk is nearly full: new work waits for free space
     ├── IllegalTransition     a state machine was asked for a move it does not have (a bug)
     └── StoreError            the store failed to commit; the dispatcher stops (fail-stop)

Only ``corral.api.errors`` maps these to HTTP statuses, and ``corral.client`` turns the
statuses back into the same classes, so a user catches the same exception in-process or
over HTTP. This module knows nothing of HTTP.
"""

from __future__ import annotations

from typing import Any


class CorralError(Exception):
    """Root of every error corral raises on purpose."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: dotted path of the request field at fault, when one is
        self.field = field

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": type(self).__name__, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class InvalidRequest(CorralError):
    """The request is malformed or names something impossible; ``field`` says where."""


class NotFound(CorralError):
    """The named definition, process, node or engine does not exist."""


class Conflict(CorralError):
    """The request contradicts what the dispatcher already holds."""


class Unauthorized(CorralError):
    """The request carried no token or a wrong one."""


class WaitTimeout(CorralError):
    """A wait ended before its condition held."""


class Unavailable(CorralError):
    """The dispatcher cannot serve the request now; retrying later may succeed."""


class StoreFull(Unavailable):
    """The store's disk has less free space than the reserve: new work is refused.

    What the dispatcher already knows goes on (its state changes use the reserve); an
    operator frees space and the same request then succeeds.
    """


class IllegalTransition(CorralError):
    """A state machine was asked for a transition it does not allow."""


class StoreError(CorralError):
    """The store could not commit a change."""


ERROR_CLASSES: dict[str, type[CorralError]] = {
    cls.__name__: cls
    for cls in (
        CorralError,
        InvalidRequest,
        NotFound,
        Conflict,
        Unauthorized,
        WaitTimeout,
        Unavailable,
        StoreFull,
        IllegalTransition,
        StoreError,
    )
}
