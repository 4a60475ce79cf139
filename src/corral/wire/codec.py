"""Framing and msgpack encoding of typed messages, and the connections that carry them.

A ``MessageSet`` is one protocol: its message types (frozen dataclasses) and their codes.
``AGENT_MESSAGES`` is the dispatcher ⇄ agent protocol and ``Connection`` its connection; the
compute protocol (``corral.compute``) uses the same framing with a set of its own.

A frame is a 4-byte big-endian length followed by a msgpack array of messages; each message
is a compact array ``[type_code, field1, field2, ...]`` (nested ``ProcessReport``\\ s too).
Several messages travel in one frame: ``Connection.send`` queues, and one frame per event-loop
turn carries everything queued during that turn, which is what makes the hot paths (launches,
reports) cheap.

Decoding never runs code: msgpack with ``raw=False, strict_map_key=True``, then every field is
checked against its declared type. Anything else raises ``ProtocolError``, and the caller drops
the connection. Before authentication a frame may be at most ``MAX_FRAME_BEFORE_AUTH`` bytes,
after it ``MAX_FRAME``; a longer declared length is refused before a byte of it is read.

Errors::

    CorralError
     ├── ProtocolError      the peer does not speak this protocol: drop the connection
     └── ConnectionClosed   the peer went away: reconnect (agent) or mark the node (hub)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import operator
import struct
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Generic, TypeVar

import msgpack  # type: ignore[import-untyped]  # msgpack ships no type information

from corral.errors import CorralError
from corral.wire.messages import TYPE_CODES, Message

MAX_FRAME_BEFORE_AUTH: Final = 1 << 20
MAX_FRAME: Final = 64 << 20
_SPLIT_AT: Final = 1 << 20  # a sender starts a new frame past this, so a frame stays moderate
_HEADER: Final = struct.Struct(">I")

M = TypeVar("M")


class ProtocolError(CorralError):
    """The peer sent something that is not this protocol (bad frame, type or field)."""


class ConnectionClosed(CorralError):
    """The connection ended: the peer closed it, reset it, or died mid-frame."""


# --- per-type field checks, derived once from the dataclass annotations -----------------------

_Check = Callable[[Any], Any]


def _fail(expected: str, value: object) -> typing.NoReturn:
    raise ProtocolError(f"expected {expected}, got {type(value).__name__}")


def _check_str(value: Any) -> Any:
    if type(value) is not str:
        _fail("str", value)
    return value


def _check_int(value: Any) -> Any:
    if type(value) is not int:  # bool is an int subclass: refuse it
        _fail("int", value)
    return value


def _check_float(value: Any) -> Any:
    if type(value) is float:
        return value
    if type(value) is int:  # another implementation may pack 1.0 as 1
        return float(value)
    _fail("float", value)


def _check_bytes(value: Any) -> Any:
    if type(value) is not bytes:
        _fail("bytes", value)
    return value


_SCALARS: Final[dict[Any, _Check]] = {
    str: _check_str,
    int: _check_int,
    float: _check_float,
    bytes: _check_bytes,
}


def _optional(inner: _Check) -> _Check:
    def check(value: Any) -> Any:
        return None if value is None else inner(value)

    return check


def _literal(allowed: tuple[Any, ...]) -> _Check:
    choices = frozenset(allowed)

    def check(value: Any) -> Any:
        if type(value) is not str or value not in choices:
            _fail(f"one of {sorted(choices)}", value)
        return value

    return check


def _list_of(inner: _Check) -> _Check:
    def check(value: Any) -> Any:
        if type(value) is not list:
            _fail("array", value)
        return [inner(item) for item in value]

    return check


def _str_map(value: Any) -> Any:
    if type(value) is not dict:
        _fail("map", value)
    for key, item in value.items():
        if type(key) is not str or type(item) is not str:
            _fail("map of str to str", value)
    return value


def _check_bool(value: Any) -> Any:
    if type(value) is not bool:
        _fail("bool", value)
    return value


_SCALARS[bool] = _check_bool


class _Spec:
    """How one message type goes to and from its wire array."""

    __slots__ = ("checks", "cls", "code", "get", "names", "nested")

    def __init__(self, cls: type[Any], code: int, messages: MessageSet[Any]) -> None:
        hints = typing.get_type_hints(cls)
        self.cls = cls
        self.code = code
        self.names = tuple(field.name for field in dataclasses.fields(cls))
        self.checks = tuple(messages.checker(hints[name]) for name in self.names)
        # Fields holding lists of messages are turned into lists of arrays when encoding.
        self.nested = tuple(
            i for i, name in enumerate(self.names) if messages.holds_messages(hints[name])
        )
        getter = operator.attrgetter(*self.names)
        self.get: Callable[[Any], tuple[Any, ...]] = (
            getter if len(self.names) > 1 else lambda msg: (getter(msg),)
        )


class MessageSet(Generic[M]):
    """One protocol's message types (frozen dataclasses) and the codes that lead them.

    Derives each type's field checks once from its annotations: str, int, float, bool, bytes,
    ``X | None``, ``Literal[...]``, ``list[X]`` (messages of the set included) and
    ``dict[str, str]``.
    """

    def __init__(self, type_codes: Mapping[type[M], int]) -> None:
        self._codes = dict(type_codes)
        self._by_class: dict[type[Any], _Spec] = {}
        for cls, code in type_codes.items():
            self._by_class[cls] = _Spec(cls, code, self)
        self._by_code = {spec.code: spec for spec in self._by_class.values()}

    def holds_messages(self, annotation: Any) -> bool:
        return (
            typing.get_origin(annotation) is list and typing.get_args(annotation)[0] in self._codes
        )

    def checker(self, annotation: Any) -> _Check:
        if annotation in _SCALARS:
            return _SCALARS[annotation]
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin in (types.UnionType, typing.Union) and len(args) == 2 and type(None) in args:
            (inner,) = (arg for arg in args if arg is not type(None))
            return _optional(self.checker(inner))
        if origin is typing.Literal:
            return _literal(args)
        if self.holds_messages(annotation):
            nested: type[Any] = args[0]
            return _list_of(lambda item: self._decode_as(nested, item))
        if origin is list:
            return _list_of(self.checker(args[0]))
        if origin is dict and args == (str, str):
            return _str_map
        raise TypeError(f"no wire encoding for {annotation!r}")

    def _to_wire(self, msg: M) -> list[Any]:
        spec = self._by_class[type(msg)]
        values = list(spec.get(msg))
        for i in spec.nested:
            values[i] = [self._to_wire(item) for item in values[i]]
        return [spec.code, *values]

    def _decode_as(self, cls: type[Any], item: Any) -> Any:
        spec = self._by_class[cls]
        if type(item) is not list or not item or type(item[0]) is not int or item[0] != spec.code:
            raise ProtocolError(f"expected a {cls.__name__} array")
        return _decode_with(spec, item)

    def decode_message(self, item: Any) -> M:
        """Turn one decoded msgpack array back into its message, checking every field."""
        if type(item) is not list or not item or type(item[0]) is not int:
            raise ProtocolError("a message must be an array led by its type code")
        spec = self._by_code.get(item[0])
        if spec is None:
            raise ProtocolError(f"unknown message type code {item[0]}")
        return _decode_with(spec, item)  # type: ignore[no-any-return]

    def decode_frame(self, payload: bytes) -> list[M]:
        """Decode a frame's payload (without its length prefix) into its messages."""
        try:
            obj = msgpack.unpackb(payload, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types for bad input
            raise ProtocolError(f"undecodable frame: {exc}") from None
        if type(obj) is not list:
            raise ProtocolError("a frame must be an array of messages")
        return [self.decode_message(item) for item in obj]

    def encode_message(self, msg: M) -> bytes:
        """The msgpack bytes of one message, ready to be placed in a frame.

        Raises ProtocolError for what the wire cannot carry (a lone surrogate in a str, an int
        beyond 64 bits).
        """
        try:
            return msgpack.packb(self._to_wire(msg), use_bin_type=True)  # type: ignore[no-any-return]
        except (TypeError, ValueError, OverflowError) as exc:
            raise ProtocolError(f"cannot encode {type(msg).__name__}: {exc}") from None

    def encode_frame(self, messages: Iterable[M]) -> bytes:
        """One whole frame (length prefix included) carrying ``messages``."""
        bodies = [self.encode_message(msg) for msg in messages]
        return b"".join(_frame_parts(bodies, sum(map(len, bodies))))

    def decode_whole_frame(self, frame: bytes) -> list[M]:
        """The messages of one whole frame, as :meth:`encode_frame` made it."""
        if len(frame) < _HEADER.size or _HEADER.unpack_from(frame)[0] != len(frame) - _HEADER.size:
            raise ProtocolError("the frame's length prefix does not match its size")
        return self.decode_frame(frame[_HEADER.size :])


def _decode_with(spec: _Spec, item: list[Any]) -> Any:
    if len(item) != len(spec.checks) + 1:
        raise ProtocolError(
            f"{spec.cls.__name__} has {len(spec.checks)} fields, got {len(item) - 1}"
        )
    values = []
    for name, check, value in zip(spec.names, spec.checks, item[1:], strict=True):
        try:
            values.append(check(value))
        except ProtocolError as exc:
            raise ProtocolError(f"{spec.cls.__name__}.{name}: {exc.message}") from None
    return spec.cls(*values)


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _frame_parts(bodies: list[bytes], size: int) -> list[bytes]:
    """Length prefix and array header for already-encoded message bodies of total ``size``."""
    header = _array_header(len(bodies))
    return [_HEADER.pack(len(header) + size), header, *bodies]


AGENT_MESSAGES: Final = MessageSet[Message](TYPE_CODES)
"""The dispatcher ⇄ agent protocol."""

decode_message = AGENT_MESSAGES.decode_message
decode_frame = AGENT_MESSAGES.decode_frame
decode_whole_frame = AGENT_MESSAGES.decode_whole_frame
encode_message = AGENT_MESSAGES.encode_message
encode_frame = AGENT_MESSAGES.encode_frame


# --- the connection ---------------------------------------------------------------------------


class FramedConnection(Generic[M]):
    """A framed, batching connection carrying the messages of one ``MessageSet``.

    ``send`` encodes at once (so an oversize message fails in the caller) and queues; a
    callback scheduled with ``call_soon`` writes everything queued in one loop turn as one frame
    (or a few, past 1 MiB). Messages sent after ``close`` are dropped: the protocol is
    level-triggered, and the next Hello carries the truth again.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        messages: MessageSet[M],
        *,
        max_frame: int = MAX_FRAME_BEFORE_AUTH,
    ) -> None:
        self._messages = messages
        self._reader = reader
        self._writer = writer
        self._max_frame = max_frame
        self._loop = asyncio.get_running_loop()
        self._bodies: list[bytes] = []
        self._size = 0
        self._flush_scheduled = False
        self._closed = False

    @property
    def peer(self) -> str:
        """The peer's address, for log lines."""
        name = self._writer.get_extra_info("peername")
        return f"{name[0]}:{name[1]}" if isinstance(name, tuple) else str(name)

    def get_extra_info(self, name: str) -> Any:
        """Transport details (``"socket"``, ``"peercert"``…), as ``StreamWriter`` gives them."""
        return self._writer.get_extra_info(name)

    @property
    def closed(self) -> bool:
        return self._closed or self._writer.is_closing()

    def mark_authenticated(self) -> None:
        """Raise the incoming frame limit from ``MAX_FRAME_BEFORE_AUTH`` to ``MAX_FRAME``."""
        self._max_frame = MAX_FRAME

    async def read_batch(self) -> list[M]:
        """Wait for the next frame and return its messages (an empty frame gives none).

        Raises ``ConnectionClosed`` at end of stream and ``ProtocolError`` for a bad frame.
        """
        header = await self._read_exactly(_HEADER.size)
        (length,) = _HEADER.unpack(header)
        if length > self._max_frame:
            raise ProtocolError(f"frame of {length} bytes exceeds the limit of {self._max_frame}")
        return self._messages.decode_frame(await self._read_exactly(length))

    async def _read_exactly(self, n: int) -> bytes:
        try:
            return await self._reader.readexactly(n)
        except asyncio.IncompleteReadError:
            raise ConnectionClosed(f"connection to {self.peer} closed") from None
        except OSError as exc:
            raise ConnectionClosed(f"connection to {self.peer} lost: {exc}") from exc

    def send(self, msg: M) -> None:
        """Queue ``msg``; it leaves in this loop turn's frame."""
        if self.closed:
            return
        body = self._messages.encode_message(msg)
        if len(body) + 5 > MAX_FRAME:  # 5: the largest msgpack array header
            raise ProtocolError(f"{type(msg).__name__} of {len(body)} bytes cannot fit in a frame")
        if self._size + len(body) > _SPLIT_AT and self._bodies:
            self._flush()
        self._bodies.append(body)
        self._size += len(body)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._scheduled_flush)

    def send_many(self, messages: Iterable[M]) -> None:
        for msg in messages:
            self.send(msg)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self._flush()

    def _flush(self) -> None:
        if not self._bodies:
            return
        bodies, size = self._bodies, self._size
        self._bodies, self._size = [], 0
        if not self.closed:
            self._writer.writelines(_frame_parts(bodies, size))

    async def drain(self) -> None:
        """Write what is queued now and wait until the transport's buffer has room."""
        self._flush()
        try:
            await self._writer.drain()
        except OSError as exc:
            raise ConnectionClosed(f"connection to {self.peer} lost: {exc}") from exc

    async def send_now(self, msg: M) -> None:
        """Send ``msg`` without waiting for the loop turn to end, and drain."""
        self.send(msg)
        await self.drain()

    def close(self) -> None:
        """Write what is queued, then close; safe to call twice."""
        if self._closed:
            return
        self._flush()
        self._closed = True
        self._writer.close()

    async def wait_closed(self) -> None:
        # A reset while closing changes nothing for the caller.
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def aclose(self) -> None:
        self.close()
        await self.wait_closed()


class Connection(FramedConnection[Message]):
    """The dispatcher ⇄ agent connection."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_frame: int = MAX_FRAME_BEFORE_AUTH,
    ) -> None:
        super().__init__(reader, writer, AGENT_MESSAGES, max_frame=max_frame)


async def open_connection(host: str, port: int, **kwargs: Any) -> Connection:
    """Dial ``host:port`` (extra arguments go to ``asyncio.open_connection``, e.g. ``ssl``)."""
    reader, writer = await asyncio.open_connection(host, port, **kwargs)
    return Connection(reader, writer)
