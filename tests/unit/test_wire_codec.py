"""The wire codec: every message round-trips, frames batch, and bad input is a ProtocolError."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import struct
import typing
from collections.abc import Coroutine
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.wire import codec, handshake
from corral.wire.codec import (
    MAX_FRAME,
    MAX_FRAME_BEFORE_AUTH,
    Connection,
    ConnectionClosed,
    ProtocolError,
    decode_frame,
    decode_whole_frame,
    encode_frame,
)
from corral.wire.messages import (
    TYPE_CODES,
    Heartbeat,
    Hello,
    Kill,
    Launch,
    LogChunk,
    Message,
    ProcessReport,
    Shutdown,
    Welcome,
)

# --- strategies, derived from each message's annotations --------------------------------------

_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)  # UTF-8 encodable
_SCALARS: dict[Any, st.SearchStrategy[Any]] = {
    str: _text,
    int: st.integers(min_value=-(2**63), max_value=2**64 - 1),
    float: st.floats(allow_nan=False),
    bytes: st.binary(max_size=64),
}


def _strategy(annotation: Any) -> st.SearchStrategy[Any]:
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    if annotation in TYPE_CODES:
        return _message(annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin is list:
        return st.lists(_strategy(args[0]), max_size=4)
    if origin is dict:
        return st.dictionaries(_strategy(args[0]), _strategy(args[1]), max_size=4)
    (inner,) = (arg for arg in args if arg is not type(None))  # X | None
    return st.none() | _strategy(inner)


def _message(cls: type[Message]) -> st.SearchStrategy[Message]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: _strategy(hints[f.name]) for f in dataclasses.fields(cls)}
    return st.builds(cls, **fields)


messages = st.one_of([_message(cls) for cls in TYPE_CODES])


def report(upid: str = "u") -> ProcessReport:
    return ProcessReport(upid, 1, "running", 42, None, None, None, 1.5, None)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 10))


async def connection_pair() -> tuple[Connection, Connection]:
    left, right = socket.socketpair()
    ends = [await asyncio.open_connection(sock=sock) for sock in (left, right)]
    return Connection(*ends[0]), Connection(*ends[1])


# --- round trips and batching -----------------------------------------------------------------


@pytest.mark.parametrize("cls", list(TYPE_CODES), ids=lambda cls: cls.__name__)
def test_every_message_type_has_a_strategy_and_a_code(cls: type[Message]) -> None:
    assert cls in TYPE_CODES
    assert len(set(TYPE_CODES.values())) == len(TYPE_CODES)


@given(st.lists(messages, min_size=1, max_size=5))
def test_messages_round_trip_through_one_frame(batch: list[Message]) -> None:
    frame = encode_frame(batch)
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    assert decode_frame(frame[4:]) == batch
    assert decode_whole_frame(frame) == batch


@pytest.mark.parametrize("cut", [1, 3, -1])
def test_a_whole_frame_whose_prefix_does_not_match_its_size_is_refused(cut: int) -> None:
    frame = encode_frame([report()])
    with pytest.raises(ProtocolError, match="length prefix"):
        decode_whole_frame(frame[:cut] if cut > 0 else frame + b"\x00")


def test_a_message_is_a_compact_array_led_by_its_type_code() -> None:
    frame = encode_frame([Hello("n", "e", "h", 2, {}, 9, 1, [report()])])
    raw = msgpack.unpackb(frame[4:])
    assert raw == [
        [1, "n", "e", "h", 2, {}, 9, 1, [[2, "u", 1, "running", 42, *[None] * 3, 1.5, None]]]
    ]


def test_the_agent_protocol_carries_the_handshake_and_no_token() -> None:
    for cls in (handshake.Hello, handshake.Challenge, handshake.Proof):
        assert cls in TYPE_CODES
    assert "token" not in {f.name for f in dataclasses.fields(Hello)}


def test_an_integer_where_a_float_is_declared_decodes_as_a_float() -> None:
    (welcome,) = decode_frame(msgpack.packb([[16, 2, 0, 0, []]]))
    assert welcome == Welcome(2.0)
    assert isinstance(welcome, Welcome)
    assert type(welcome.heartbeat_period) is float


def test_messages_sent_in_one_loop_turn_travel_in_one_frame() -> None:
    async def scenario() -> None:
        left, right = await connection_pair()
        first: list[Message] = [Welcome(1.0), Kill("a", 1, 2.0), Shutdown(0.5)]
        left.send_many(first)
        assert await right.read_batch() == first
        left.send(Heartbeat(1.0, 3))  # a later turn: its own frame
        await asyncio.sleep(0)
        left.send(Heartbeat(2.0, 4))
        assert await right.read_batch() == [Heartbeat(1.0, 3)]
        assert await right.read_batch() == [Heartbeat(2.0, 4)]
        await left.aclose()
        with pytest.raises(ConnectionClosed):
            await right.read_batch()
        await right.aclose()

    run(scenario())


def test_a_batch_past_one_mebibyte_is_split_into_frames_in_order() -> None:
    async def scenario() -> None:
        left, right = await connection_pair()
        right.mark_authenticated()
        chunks = [LogChunk(i, bytes(300_000), 0, 0, None) for i in range(10)]
        left.send_many(chunks)
        received: list[Message] = []
        frames = 0
        while len(received) < len(chunks):
            received += await right.read_batch()
            frames += 1
        assert received == chunks
        assert frames >= 3
        await left.aclose()
        await right.aclose()

    run(scenario())


def test_send_now_writes_at_once_and_send_after_close_is_dropped() -> None:
    async def scenario() -> None:
        left, right = await connection_pair()
        await left.send_now(Welcome(1.0))
        assert await right.read_batch() == [Welcome(1.0)]
        left.close()
        left.send(Welcome(2.0))  # dropped: the next Hello tells the truth again
        with pytest.raises(ConnectionClosed):
            await right.read_batch()
        await right.aclose()

    run(scenario())


# --- what is refused --------------------------------------------------------------------------


def test_an_oversize_frame_is_refused_before_it_is_read() -> None:
    async def scenario() -> None:
        left, right = await connection_pair()
        # Only the length is ever written: reading the body would hang, refusing does not.
        left._writer.write(struct.pack(">I", MAX_FRAME_BEFORE_AUTH + 1))
        with pytest.raises(ProtocolError, match="exceeds the limit"):
            await right.read_batch()
        right.mark_authenticated()
        left._writer.write(struct.pack(">I", MAX_FRAME + 1))
        with pytest.raises(ProtocolError, match="exceeds the limit"):
            await right.read_batch()
        await left.aclose()
        await right.aclose()

    run(scenario())


def test_a_message_too_big_for_any_frame_fails_in_the_sender() -> None:
    async def scenario() -> None:
        left, right = await connection_pair()
        with pytest.raises(ProtocolError, match="cannot fit"):
            left.send(LogChunk(1, bytes(MAX_FRAME), 0, 0, None))
        with pytest.raises(ProtocolError, match="cannot encode"):
            left.send(Kill("\ud800", 1, 1.0))  # a lone surrogate has no UTF-8 form
        await left.aclose()
        await right.aclose()

    run(scenario())


GARBAGE = {
    "not msgpack": b"\xc1",
    "truncated": msgpack.packb([[16, 1.0]])[:-2],
    "trailing bytes": msgpack.packb([[16, 1.0]]) + b"\x00",
    "not an array": msgpack.packb({"type": 16}),
    "message not an array": msgpack.packb([16]),
    "empty message": msgpack.packb([[]]),
    "code not an int": msgpack.packb([["16", 1.0]]),
    "too few fields": msgpack.packb([[19, "u", 1]]),
    "too many fields": msgpack.packb([[16, 1.0, 2.0]]),
    "str for float": msgpack.packb([[16, "1"]]),
    "bool for int": msgpack.packb([[19, "u", True, 1.0]]),
    "None for str": msgpack.packb([[19, None, 1, 1.0]]),
    "bytes for str": msgpack.packb([[17, b"why"]], use_bin_type=True),
    "status outside the enum": msgpack.packb([[2, "u", 1, "zombie", *[None] * 6]]),
    "stream outside the enum": msgpack.packb([[21, 1, "u", "stdin", 0, 10]]),
    "int map key": msgpack.packb([[18, "u", 1, "/x", [], {1: "v"}, None, "{}"]]),
    "int map value": msgpack.packb([[18, "u", 1, "/x", [], {"k": 1}, None, "{}"]]),
    "argv not a list": msgpack.packb([[18, "u", 1, "/x", "a", {}, None, "{}"]]),
    "nested report with another code": msgpack.packb(
        [[1, "t", "n", "e", "h", 1, {}, 1, 1, [[16, 1.0]]]]
    ),
    "ext type": msgpack.packb([[17, msgpack.ExtType(5, b"x")]]),
    "timestamp": msgpack.packb([[3, msgpack.Timestamp(1, 0), 0]]),
}


@pytest.mark.parametrize("payload", GARBAGE.values(), ids=GARBAGE.keys())
def test_a_malformed_payload_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_frame(payload)


def test_an_unknown_type_code_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="unknown message type code 99"):
        decode_frame(msgpack.packb([[16, 1.0, 0, 0.0, []], [99, "x"]]))


def test_a_field_error_names_the_message_and_field() -> None:
    with pytest.raises(ProtocolError, match=r"Kill\.grace: expected float, got str"):
        decode_frame(msgpack.packb([[19, "u", 1, "soon"]]))


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_to_messages_or_a_protocol_error(payload: bytes) -> None:
    try:
        result = decode_frame(payload)
    except ProtocolError:
        return
    assert all(type(msg) in TYPE_CODES for msg in result)


@given(messages)
def test_every_encoded_message_is_fully_checked_on_the_way_back(msg: Message) -> None:
    raw = msgpack.unpackb(codec.encode_message(msg))
    assert codec.decode_message(raw) == msg


def test_launch_keeps_argv_env_and_optional_directory() -> None:
    launch = Launch("u", 3, "/bin/sh", ["-c", "x"], {"A": "1"}, None, '{"k": 1}')
    assert decode_frame(encode_frame([launch])[4:]) == [launch]
