"""The messages of the shared event queue's protocol.

A client (a pipeline's framework process) dials the queue server and proves the queue's
secret (``Hello``, ``Challenge``, ``Proof``: ``corral.wire.handshake``). Then it sends
requests, each with a number the server's answer repeats. Event arguments travel as JSON text:
the wire carries plain msgpack values only, never a pickle.

Client → server: ``Put`` (answered by ``Stored``), ``Take`` (``Taken``), ``Ack``,
``Release`` and ``Claim`` (``Acked``), ``List`` (``Listing``), ``Pulse``. Server → client:
the answers, ``Refused`` for a request it cannot carry out, and ``Pulse``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias

from corral.wire.codec import MessageSet
from corral.wire.handshake import Challenge, Hello, Proof

PROTOCOL_VERSION: Final = 1
#: the realm a queue client asks for in its Hello
REALM: Final = "corral-queue"


@dataclass(frozen=True, slots=True)
class NewEvent:
    name: str
    #: the arguments, as a JSON object
    args: str
    recurrent: bool


@dataclass(frozen=True, slots=True)
class QueuedEvent:
    """An event as the server holds it; ``holder`` is the client handling it, if any."""

    id: int
    queue: str
    name: str
    args: str
    recurrent: bool
    attempts: int
    holder: str | None


@dataclass(frozen=True, slots=True)
class Put:
    request: int
    queue: str
    events: list[NewEvent]


@dataclass(frozen=True, slots=True)
class Stored:
    """The events of request ``request`` are durable; their ids are ``ids``."""

    request: int
    ids: list[int]


@dataclass(frozen=True, slots=True)
class Take:
    """At most ``limit`` events of ``queue`` for this client, waiting up to ``wait`` seconds
    for one if none is pending."""

    request: int
    queue: str
    limit: int
    wait: float


@dataclass(frozen=True, slots=True)
class Taken:
    """Events now held by the client, oldest first; none if the wait ran out."""

    request: int
    events: list[QueuedEvent]


@dataclass(frozen=True, slots=True)
class Ack:
    """The client handled these events: forget them (a recurrent one goes to the back)."""

    request: int
    ids: list[int]


@dataclass(frozen=True, slots=True)
class Release:
    """The client gives these events back unhandled: they go to the front again."""

    request: int
    ids: list[int]


@dataclass(frozen=True, slots=True)
class Claim:
    """After reconnecting, the client says which events it still holds (answered by Acked)."""

    request: int
    ids: list[int]


@dataclass(frozen=True, slots=True)
class Acked:
    """Done; ``refused`` are ids this client does not hold (any more): someone else may."""

    request: int
    refused: list[int]


@dataclass(frozen=True, slots=True)
class List:
    request: int
    queue: str


@dataclass(frozen=True, slots=True)
class Listing:
    request: int
    pending: list[QueuedEvent]
    held: list[QueuedEvent]


@dataclass(frozen=True, slots=True)
class Refused:
    request: int
    message: str


@dataclass(frozen=True, slots=True)
class Pulse:
    """Both ways, every second; a client silent for five is gone, and its events' visibility
    timeout starts."""

    sent: float


QueueMessage: TypeAlias = (
    Hello
    | Challenge
    | Proof
    | NewEvent
    | QueuedEvent
    | Put
    | Stored
    | Take
    | Taken
    | Ack
    | Release
    | Claim
    | Acked
    | List
    | Listing
    | Refused
    | Pulse
)

QUEUE_MESSAGES: Final = MessageSet[QueueMessage](
    {
        Hello: 1,
        Challenge: 2,
        Proof: 3,
        NewEvent: 4,
        QueuedEvent: 5,
        Put: 6,
        Stored: 7,
        Take: 8,
        Taken: 9,
        Ack: 10,
        Release: 11,
        Acked: 12,
        List: 13,
        Listing: 14,
        Refused: 15,
        Pulse: 16,
        Claim: 17,
    }
)
