"""The messages the dispatcher and its agents exchange, as frozen records.

Each message is a ``dataclass(frozen=True, slots=True)``; its fields, in declaration order, are
what travels on the wire (see ``corral.wire.codec``), after a small integer that names its type
(``TYPE_CODES``). Adding, removing or reordering a field changes the protocol: bump
``PROTOCOL_VERSION`` when you do.

A connection opens with the mutual proof of ``corral.wire.handshake`` (its ``Hello``,
``Challenge`` and ``Proof`` have codes here too; the realm is ``AGENT_REALM``, the peer the
node id): the agent proves it holds its node's token, the dispatcher that it knows the
secret the token derives from, and the token itself never travels. Then:

Agent → dispatcher: ``Hello`` (first frame after the proofs), ``ProcessReport``,
``Heartbeat``, ``LogChunk``.
Dispatcher → agent: ``Welcome`` or ``Refused`` (answers to Hello, or to a failed
handshake), ``Launch``, ``Kill``, ``Withdraw``, ``Forget``, ``ReadLog``, ``Shutdown``,
``Renewed``.

Every command names a process by ``(upid, round)``, so a repeated command is harmless and a
command for an older round can be told apart from the current one.

Fencing: when several dispatchers share a store, the active one holds a lease whose epoch
grows at each takeover. Every order on a connection is given in the epoch its ``Welcome``
named; an agent remembers the highest epoch it was welcomed in and drops, unobeyed, a
connection of an older one (a deposed dispatcher that does not know it yet).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

from corral.wire import handshake

PROTOCOL_VERSION: Final = 4
"""Sent in the handshake's Hello and in ``Hello.version``; the hub refuses agents that speak
another version."""

AGENT_REALM: Final = "agents"
"""The handshake's realm on the agent link."""

ReportStatus: TypeAlias = Literal["queued", "running", "exited", "spawn_failed", "not_started"]
"""What the agent observed. ``queued``: received while every slot was busy, it starts when
one frees; ``not_started``: dropped from that queue (killed, withdrawn, shut down) before
it ever ran. The dispatcher turns the ends into EXITED, FAILED or TERMINATED."""

LogStream: TypeAlias = Literal["stdout", "stderr"]

QUEUED: Final = "queued"
RUNNING: Final = "running"
EXITED: Final = "exited"
SPAWN_FAILED: Final = "spawn_failed"
NOT_STARTED: Final = "not_started"


# --- agent → dispatcher -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcessReport:
    """The agent's view of one round of one process.

    ``exit_code`` is set for a normal exit, ``signal`` when a signal ended the process,
    ``error`` when it could not be spawned (or when its exit status could not be known, for a
    process adopted after an agent restart). Times are wall-clock epoch seconds.
    """

    upid: str
    round: int
    status: ReportStatus
    pid: int | None
    exit_code: int | None
    signal: int | None
    error: str | None
    started_at: float | None
    ended_at: float | None


@dataclass(frozen=True, slots=True)
class Hello:
    """First message once the handshake proved the node: who the agent is and everything it
    knows. ``node_id`` must be the node the handshake proved.

    ``inventory`` lists every process the agent tracks: running ones, and finished ones the
    dispatcher has not yet told it to ``Forget``. It is how missed reports catch up after a
    disconnection.
    """

    node_id: str
    engine: str
    hostname: str
    slots: int
    labels: dict[str, str]
    pid: int
    version: int
    inventory: list[ProcessReport]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Sent every heartbeat period once welcomed; ``running`` counts live processes."""

    sent_at: float
    running: int


@dataclass(frozen=True, slots=True)
class LogChunk:
    """Answer to ``ReadLog``: ``data`` starts at the requested offset.

    ``next_offset`` is where the next read should start: past ``data``, or, when the bytes
    at the requested offset were dropped (a log keeps its newest ``log_max_bytes``), at the
    first byte kept, with ``data`` empty; ``size`` is the file's size when it
    was read, so a reader can tell whether it has caught up. ``error`` is set (and ``data`` is
    empty) when the log cannot be read.
    """

    request_id: int
    data: bytes
    next_offset: int
    size: int
    error: str | None


# --- dispatcher → agent -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Welcome:
    """The hub accepted the Hello; heartbeats start at this period (seconds).

    ``epoch`` is the dispatcher's lease epoch (0 when it holds none: a SQLite store has a
    single dispatcher); every order of this connection is of that epoch. With a lease, the
    dispatcher sends ``Renewed`` at each renewal, and an agent that hears none for
    ``lease_duration`` seconds leaves it (0: never). ``dispatchers`` lists the agent
    addresses (``HOST:PORT``) of every dispatcher of the store, this one first: where to
    go when this one is gone.
    """

    heartbeat_period: float
    epoch: int = 0
    lease_duration: float = 0.0
    dispatchers: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Refused:
    """The hub rejected the agent (a failed handshake, a wrong version, a Hello for another
    node); it closes the connection next."""

    reason: str


@dataclass(frozen=True, slots=True)
class Launch:
    """Start round ``round`` of process ``upid``: ``exec`` with ``argv`` after it.

    ``configuration`` is a JSON text, handed to the process in ``CORRAL_CONFIGURATION`` and in
    the file named by ``CORRAL_CONFIGURATION_FILE``.
    """

    upid: str
    round: int
    exec: str
    argv: list[str]
    env: dict[str, str]
    working_directory: str | None
    configuration: str


@dataclass(frozen=True, slots=True)
class Kill:
    """SIGTERM the process group of that round, then SIGKILL it after ``grace`` seconds."""

    upid: str
    round: int
    grace: float


@dataclass(frozen=True, slots=True)
class Withdraw:
    """Drop that round from the queue if it has not started (answered by a ``not_started``
    report, so the dispatcher can place it elsewhere); a round that started is left alone."""

    upid: str
    round: int


@dataclass(frozen=True, slots=True)
class Forget:
    """The dispatcher has durably recorded that round's end: drop it from the inventory."""

    upid: str
    round: int


@dataclass(frozen=True, slots=True)
class ReadLog:
    """Read at most ``limit`` bytes of a process's log from ``offset``; answered by LogChunk."""

    request_id: int
    upid: str
    stream: LogStream
    offset: int
    limit: int


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Terminate every process (TERM, then KILL after ``grace``), report them, and exit 0."""

    grace: float


@dataclass(frozen=True, slots=True)
class Renewed:
    """The dispatcher renewed its lease of ``epoch``; the dispatchers are now these."""

    epoch: int
    dispatchers: list[str]


HandshakeMessage: TypeAlias = handshake.Hello | handshake.Challenge | handshake.Proof
AgentMessage: TypeAlias = Hello | ProcessReport | Heartbeat | LogChunk
DispatcherMessage: TypeAlias = (
    Welcome | Refused | Launch | Kill | Withdraw | Forget | ReadLog | Shutdown | Renewed
)
Message: TypeAlias = HandshakeMessage | AgentMessage | DispatcherMessage

TYPE_CODES: Final[dict[type[Message], int]] = {
    Hello: 1,
    ProcessReport: 2,
    Heartbeat: 3,
    LogChunk: 4,
    handshake.Hello: 5,
    handshake.Proof: 6,
    Welcome: 16,
    Refused: 17,
    Launch: 18,
    Kill: 19,
    Forget: 20,
    ReadLog: 21,
    Shutdown: 22,
    Withdraw: 23,
    Renewed: 24,
    handshake.Challenge: 25,
}
"""The number that leads each message on the wire. Never reuse a retired number."""
