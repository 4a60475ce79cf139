"""TCP server for agents: authenticate each agent, then relay batches to the handler.

A connection opens with the mutual handshake of ``corral.wire.handshake``: the agent proves
it holds the token of the node it claims (``corral.secretfile.node_token`` of the
dispatcher's agent secret, derived here from the claimed node id), and the hub proves it
knows that secret; the token never travels. Only then is the agent's Hello read, and it
must name the node the handshake proved, so an agent holding node A's token cannot join as
node B. Nothing a peer sends is acted on before both proofs hold.

In-process agents (the fake driver's, through ``attach``) have no link to sniff: they hand
their token to ``attach`` beside their Hello, and it is checked against their node's.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
import ssl
from typing import Protocol

from corral.core.ids import NodeId
from corral.secretfile import node_token
from corral.wire.codec import Connection, ConnectionClosed, ProtocolError
from corral.wire.handshake import AuthenticationFailed, answer_hello
from corral.wire.messages import AGENT_REALM, PROTOCOL_VERSION, Hello, Message, Refused

log = logging.getLogger("corral.hub")

#: an agent that connects but has not proved its token and sent its Hello within this many
#: seconds is dropped
HELLO_TIMEOUT = 10.0


class Link(Protocol):
    """Where the dispatcher's messages to one agent go: a wire ``Connection``, or an
    in-process agent's inbox (``Hub.attach``)."""

    @property
    def peer(self) -> str: ...

    @property
    def closed(self) -> bool: ...

    def send(self, msg: Message) -> None: ...

    def close(self) -> None: ...


class AgentSession:
    """One authenticated agent connection."""

    def __init__(self, hello: Hello, conn: Link) -> None:
        self.hello = hello
        self.node_id = NodeId(hello.node_id)
        self._conn = conn

    @property
    def peer(self) -> str:
        return self._conn.peer

    @property
    def closed(self) -> bool:
        return self._conn.closed

    def send(self, msg: Message) -> None:
        self._conn.send(msg)

    def close(self) -> None:
        self._conn.close()


class AgentHandler(Protocol):
    def agent_joined(self, session: AgentSession) -> str | None:
        """Accept the agent (return None, and send it a Welcome) or give a refusal reason."""
        ...

    def agent_batch(self, session: AgentSession, messages: list[Message]) -> None: ...

    def agent_left(self, session: AgentSession) -> None: ...


class Hub:
    def __init__(self, secret: str, handler: AgentHandler) -> None:
        """``secret`` is the dispatcher's agent secret, from which each node's token is
        derived."""
        self._secret = secret
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._sessions: dict[NodeId, AgentSession] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._conns: set[Connection] = set()

    async def start(
        self, host: str, port: int, tls: ssl.SSLContext | None = None
    ) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve, host, port, ssl=tls)
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def start_on(self, sock: socket.socket, tls: ssl.SSLContext | None = None) -> None:
        """Serve on a socket bound beforehand (its address may be needed before we start);
        with ``tls``, agents must dial over TLS."""
        self._server = await asyncio.start_server(self._serve, sock=sock, ssl=tls)

    def session(self, node_id: NodeId) -> AgentSession | None:
        return self._sessions.get(node_id)

    @property
    def connected(self) -> int:
        return len(self._sessions)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        # Closing the connections ends their tasks through ConnectionClosed; cancelling
        # them instead would make asyncio's stream callback log the cancellation.
        for conn in list(self._conns):
            conn.close()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=2.0)
            for task in late:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    def attach(self, hello: Hello, token: str, link: Link) -> Attached | str:
        """Join an in-process agent (the fake driver's) as a connection would: its ``token``
        must be its node's and the handler is asked; returns where its messages go, or why it
        was refused."""
        if not self._is_token_of(hello.node_id, token):
            return "wrong agent token"
        session = AgentSession(hello, link)
        reason = self._handler.agent_joined(session)
        if reason is not None:
            return reason
        previous = self._sessions.get(session.node_id)
        if previous is not None:
            previous.close()
        self._sessions[session.node_id] = session
        return Attached(self, session)

    def _is_token_of(self, node_id: str, token: str) -> bool:
        expected = node_token(self._secret, node_id).encode()
        return hmac.compare_digest(token.encode("utf-8", "surrogatepass"), expected)

    def _deliver(self, session: AgentSession, messages: list[Message]) -> None:
        self._handler.agent_batch(session, messages)

    def _detach(self, session: AgentSession) -> None:
        if self._sessions.get(session.node_id) is session:
            del self._sessions[session.node_id]
            self._handler.agent_left(session)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = Connection(reader, writer)
        self._conns.add(conn)
        try:
            session = await self._authenticate(conn)
            if session is not None:
                await self._relay(session, conn)
        except (ConnectionClosed, ProtocolError, TimeoutError) as exc:
            log.info("agent connection from %s ended: %s", conn.peer, exc)
        finally:
            conn.close()
            self._conns.discard(conn)
            self._tasks.discard(task)

    async def _authenticate(self, conn: Connection) -> AgentSession | None:
        async with asyncio.timeout(HELLO_TIMEOUT):
            node_id = await self._prove(conn)
            if node_id is None:
                return None
            batch = await conn.read_batch()
        hello = batch[0] if batch else None
        if not isinstance(hello, Hello):
            raise ProtocolError("the first message after the handshake must be a Hello")
        if hello.node_id != node_id:
            log.warning(
                "refused agent %r from %s: its Hello names node %r",
                node_id,
                conn.peer,
                hello.node_id,
            )
            await conn.send_now(Refused(f"this connection proved node {node_id!r}, not another"))
            return None
        if hello.version != PROTOCOL_VERSION:
            await conn.send_now(
                Refused(f"protocol version {hello.version} is not {PROTOCOL_VERSION}")
            )
            return None
        session = AgentSession(hello, conn)
        reason = self._handler.agent_joined(session)
        if reason is not None:
            log.warning("refused agent %r from %s: %s", hello.node_id, conn.peer, reason)
            await conn.send_now(Refused(reason))
            return None
        previous = self._sessions.get(session.node_id)
        if previous is not None:
            previous.close()
        self._sessions[session.node_id] = session
        rest = batch[1:]
        if rest:
            self._handler.agent_batch(session, rest)
        return session

    async def _prove(self, conn: Connection) -> str | None:
        """The mutual handshake; the node id it proved, or None once the agent is refused."""
        claimed: list[str] = []  # the node id of the agent's Hello, once one was read

        def token_of(node_id: str) -> str:
            claimed.append(node_id)
            return node_token(self._secret, node_id)

        try:
            proven = await answer_hello(conn, token_of, AGENT_REALM, PROTOCOL_VERSION)
        except AuthenticationFailed as exc:
            log.warning("refused the agent at %s: %s", conn.peer, exc.message)
            await conn.send_now(Refused(f"handshake failed: {exc.message}"))
            return None
        except ProtocolError as exc:
            # An agent of protocol version 3 or older opens with a Hello that carries its
            # token: its shape is refused before any field is looked at, and a Refused (which
            # every version reads) stops it.
            log.warning(
                "refused the agent at %s: not agent protocol version %d (an older agent?): %s",
                conn.peer,
                PROTOCOL_VERSION,
                exc.message,
            )
            await conn.send_now(
                Refused(f"this dispatcher speaks agent protocol version {PROTOCOL_VERSION}")
            )
            return None
        except ConnectionClosed:
            if not claimed:
                raise
            # The agent checks this side's proof first: with a wrong token, it finds it wrong.
            log.warning(
                "agent %r at %s left the handshake without proving its token: its token is "
                "wrong (or it takes this dispatcher for an impostor)",
                claimed[0],
                conn.peer,
            )
            return None
        return proven.peer

    async def _relay(self, session: AgentSession, conn: Connection) -> None:
        try:
            while True:
                self._handler.agent_batch(session, await conn.read_batch())
        finally:
            self._detach(session)


class Attached:
    """An in-process agent's side of its session: what it says, and its leaving."""

    def __init__(self, hub: Hub, session: AgentSession) -> None:
        self._hub = hub
        self.session = session

    def deliver(self, messages: list[Message]) -> None:
        if not self.session.closed:
            self._hub._deliver(self.session, messages)

    def detach(self) -> None:
        self._hub._detach(self.session)
