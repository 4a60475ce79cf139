"""The messages a computation's client and its worker processes exchange.

Framed and batched like the agent protocol (``corral.wire.codec``), with a message set of its
own. Fields of type ``bytes`` named ``blob``, ``call`` or ``payload`` hold pickles: they are
decoded only after both ends proved they know the computation's secret (``Hello``,
``Challenge``, ``Proof``; see ``corral.wire.handshake``; the realm is the computation, or the
shared pool, and the peer the worker). Before that, a frame holds plain
msgpack values only and is at most ``MAX_FRAME_BEFORE_AUTH`` bytes.

Worker → client: ``Hello`` (first frame), ``Proof``, ``Ready``, ``Done``, ``ToTask``,
``ToMailbox``, ``Pulse``. Client → worker: ``Challenge``, ``Setup``, ``Code``, ``Run``,
``ToTask``, ``Cancel``, ``Pulse``, ``Close``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias

from corral.wire.codec import MessageSet
from corral.wire.handshake import Challenge, Hello, Proof

PROTOCOL_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class File:
    """A file of the computation, for the worker's working directory (inside ``Setup``)."""

    name: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Setup:
    """The computation's components: files for the working directory, modules to import from
    it, then code (a pickle of functions and classes by code id). ``computation`` is the
    client's computation (a worker of a shared pool serves several); ``node`` is the node the
    client knows the worker by (the dispatcher's node id)."""

    computation: str
    node: str
    files: list[File]
    modules: list[str]
    blob: bytes
    pulse_interval: float


@dataclass(frozen=True, slots=True)
class Ready:
    """The worker applied Setup; ``running`` are the tasks it still runs from before."""

    running: list[int]


@dataclass(frozen=True, slots=True)
class Code:
    """Functions shipped once, a pickle of ``{code id: function}``, named by id in Runs."""

    blob: bytes


@dataclass(frozen=True, slots=True)
class Run:
    """Run ``code`` with the pickled ``(args, kwargs)`` as task ``task``."""

    task: int
    code: int
    call: bytes
    io: bool


@dataclass(frozen=True, slots=True)
class Done:
    """Task ``task`` ended: ``payload`` is its pickled result, or its pickled exception."""

    task: int
    ok: bool
    payload: bytes
    traceback: str


@dataclass(frozen=True, slots=True)
class ToTask:
    """A message for task ``task`` (the client relays those between workers)."""

    task: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class ToMailbox:
    """A message from a task for one of the client's mailboxes."""

    mailbox: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Cancel:
    task: int


@dataclass(frozen=True, slots=True)
class Pulse:
    """Sent every pulse interval both ways; five missed pulses mean the peer is gone."""

    sent: float


@dataclass(frozen=True, slots=True)
class Close:
    """The computation is over: cancel every task and exit."""

    reason: str


ComputeMessage: TypeAlias = (
    Hello
    | Challenge
    | Proof
    | File
    | Setup
    | Ready
    | Code
    | Run
    | Done
    | ToTask
    | ToMailbox
    | Cancel
    | Pulse
    | Close
)

COMPUTE_MESSAGES: Final = MessageSet[ComputeMessage](
    {
        Hello: 1,
        Challenge: 2,
        Proof: 3,
        Setup: 4,
        Ready: 5,
        Code: 6,
        Run: 7,
        Done: 8,
        ToTask: 9,
        ToMailbox: 10,
        Cancel: 11,
        Pulse: 12,
        Close: 13,
        File: 14,
    }
)
