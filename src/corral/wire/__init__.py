"""The dispatcher ⇄ agent protocol: typed messages and their framing.

Owns ``messages`` (frozen records, one per message type) and ``codec`` (length-prefixed msgpack
frames, batching, and the asyncio ``Connection`` both the hub and the agent use; the compute
protocol reuses the framing with a ``MessageSet`` of its own). It imports
the standard library, msgpack and ``corral.errors`` only, because the agent, which must stay
light, imports it. Nothing is unpickled here, ever.
"""

from corral.wire.codec import (
    MAX_FRAME,
    MAX_FRAME_BEFORE_AUTH,
    Connection,
    ConnectionClosed,
    FramedConnection,
    MessageSet,
    ProtocolError,
    decode_frame,
    encode_frame,
    open_connection,
)
from corral.wire.messages import (
    PROTOCOL_VERSION,
    AgentMessage,
    DispatcherMessage,
    Forget,
    Heartbeat,
    Hello,
    Kill,
    Launch,
    LogChunk,
    Message,
    ProcessReport,
    ReadLog,
    Refused,
    Renewed,
    Shutdown,
    Welcome,
    Withdraw,
)

__all__ = [
    "MAX_FRAME",
    "MAX_FRAME_BEFORE_AUTH",
    "PROTOCOL_VERSION",
    "AgentMessage",
    "Connection",
    "ConnectionClosed",
    "DispatcherMessage",
    "Forget",
    "FramedConnection",
    "Heartbeat",
    "Hello",
    "Kill",
    "Launch",
    "LogChunk",
    "Message",
    "MessageSet",
    "ProcessReport",
    "ProtocolError",
    "ReadLog",
    "Refused",
    "Renewed",
    "Shutdown",
    "Welcome",
    "Withdraw",
    "decode_frame",
    "encode_frame",
    "open_connection",
]
