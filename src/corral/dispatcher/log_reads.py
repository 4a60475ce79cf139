"""Reading a process's log from its node: a question over the agent wire, and its answer.

Each read is a ``ReadLog`` with a fresh request id; only the node asked may answer it (a
chunk carrying the id of a question put to another node is ignored), so one agent cannot
answer for another.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any, Final

from corral.core.ids import NodeId, Upid
from corral.errors import Unavailable
from corral.hub import AgentSession
from corral.wire.messages import LogChunk, LogStream, ReadLog

log = logging.getLogger("corral.dispatcher")

LOG_TIMEOUT: Final = 10.0


class LogReads:
    """The log reads awaiting an answer, with the node each was asked of."""

    def __init__(self) -> None:
        self._asked: dict[int, tuple[NodeId, asyncio.Future[LogChunk]]] = {}
        self._ids = itertools.count(1)

    async def read(
        self,
        node_id: NodeId,
        session: AgentSession,
        upid: Upid,
        stream: str,
        offset: int,
        limit: int,
    ) -> dict[str, Any]:
        request_id = next(self._ids)
        waiter: asyncio.Future[LogChunk] = asyncio.get_running_loop().create_future()
        self._asked[request_id] = (node_id, waiter)
        which: LogStream = "stderr" if stream == "stderr" else "stdout"
        session.send(ReadLog(request_id, upid, which, offset, limit))
        try:
            chunk = await asyncio.wait_for(waiter, LOG_TIMEOUT)
        except TimeoutError:
            raise Unavailable(f"node {node_id} did not send the log in {LOG_TIMEOUT:g} s") from None
        finally:
            self._asked.pop(request_id, None)
        if chunk.error is not None:
            raise Unavailable(f"node {node_id} could not read the log: {chunk.error}")
        return {
            "data": chunk.data.decode("utf-8", errors="replace"),
            "next_offset": chunk.next_offset,
            "size": chunk.size,
        }

    def answered(self, node_id: NodeId, chunk: LogChunk) -> None:
        asked = self._asked.get(chunk.request_id)
        if asked is None or asked[0] != node_id:
            # an answer to no question of ours, or to one asked of another node
            log.warning("log chunk %d from %s ignored: not asked of it", chunk.request_id, node_id)
            return
        del self._asked[chunk.request_id]
        if not asked[1].done():
            asked[1].set_result(chunk)
