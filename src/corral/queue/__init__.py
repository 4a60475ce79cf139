"""The shared, durable event queue: a server, its protocol, and its clients.

Events are appended to named queues, taken by clients (each event held by one client at a
time), and acknowledged once handled. The queue's state is a table of the corral store, so
it survives crashes; a client that dies has its events given to others after a visibility
timeout. ``corral.pipeline`` builds its framework on it; ``corral queue serve`` runs a server.
"""

from corral.queue.client import BlockingQueueClient, QueueClient, QueueRefused
from corral.queue.messages import QueuedEvent
from corral.queue.server import OwnQueueServer, QueueServer

__all__ = [
    "BlockingQueueClient",
    "OwnQueueServer",
    "QueueClient",
    "QueueRefused",
    "QueueServer",
    "QueuedEvent",
]
