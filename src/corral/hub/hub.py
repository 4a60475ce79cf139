"""TCP server for agents: authenticate the Hello, then relay batches to the handler.

An agent proves the node id its Hello claims: its token must be that node's own
(``corral.secretfile.node_token`` of the dispatcher's agent secret), so an agent holding
node A's token cannot join as node B.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
from typing import Protocol

from corral.core.ids import NodeId
from corral.secretfile import node_token
from corral.wire.codec import Connection, ConnectionClosed, ProtocolError
from corral.wire.messages import PROTOCOL_VERSION, Hello, Message, Refused

log = logging.getLogger("corral.hub")

#: an agent that connects but sends no Hello within this many seconds is dropped
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

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve, host, port)
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def start_on(self, sock: socket.socket) -> None:
        """Serve on a socket bound beforehand (its address may be needed before we start)."""
        self._server = await asyncio.start_server(self._serve, sock=sock)

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

    def attach(self, hello: Hello, link: Link) -> Attached | str:
        """Join an in-process agent (the fake driver's) exactly as a connection would: the
        token is checked and the handler asked; returns where its messages go, or why it was
        refused."""
        if not self._proves_its_node(hello):
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

    def _proves_its_node(self, hello: Hello) -> bool:
        expected = node_token(self._secret, hello.node_id).encode()
        return hmac.compare_digest(hello.token.encode("utf-8", "surrogatepass"), expected)

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
        batch = await asyncio.wait_for(conn.read_batch(), HELLO_TIMEOUT)
        hello = batch[0] if batch else None
        if not isinstance(hello, Hello):
            raise ProtocolError("the first message of an agent must be a Hello")
        if not self._proves_its_node(hello):
            log.warning("refused agent %r from %s: wrong token", hello.node_id, conn.peer)
            await conn.send_now(Refused("wrong agent token"))
            return None
        if hello.version != PROTOCOL_VERSION:
            await conn.send_now(
                Refused(f"protocol version {hello.version} is not {PROTOCOL_VERSION}")
            )
            return None
        conn.mark_authenticated()
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
