"""What a computation raises, classified by what its user should do::

    CorralError
     ├── Unauthorized
     │    └── AuthenticationFailed   a peer did not prove it knows the secret: dropped
     │                               (``corral.wire.handshake``)
     └── ComputeError            base of the computation errors
          ├── TaskAbandoned          the task's worker died or went silent; not retried
          ├── ComputationClosed      the computation closed before the task ended
          └── RemoteError            the task raised an exception that cannot travel back

A task that raises an exception its client can unpickle re-raises that very exception from
``await rtask.result()``, with the worker's traceback added as a note.
"""

from __future__ import annotations

from corral.errors import CorralError


class ComputeError(CorralError):
    """Base of the errors of ``corral.compute``."""


class TaskAbandoned(ComputeError):
    """The worker running the task died or stopped answering before the task ended."""


class ComputationClosed(ComputeError):
    """The computation was closed while the task was still pending."""


class RemoteError(ComputeError):
    """A remote exception that could not be unpickled here; ``traceback`` is the remote one."""

    def __init__(self, message: str, traceback: str) -> None:
        super().__init__(message)
        self.traceback = traceback
