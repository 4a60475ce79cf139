"""Every wire decoder (agent, compute, queue) on hostile input: messages of its own set, or
a ``ProtocolError``; nothing else escapes, nothing hangs and nothing is unpickled.

Four kinds of input, for each of the three sets: structured garbage (arrays led by a type
code, fields of any kind and number), arbitrary bytes, messages of the right type and
arity whose fields are of any kind (so every field's check is reached), and byte streams
cut anywhere, read by the framed connection until it gives up. Bytes fields carry, now and
then, a pickle that fails the test if anything ever loads it. That is 3,300 cases a run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import pickle
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.compute.messages import COMPUTE_MESSAGES
from corral.queue.messages import QUEUE_MESSAGES
from corral.wire.codec import (
    AGENT_MESSAGES,
    MAX_FRAME_BEFORE_AUTH,
    ConnectionClosed,
    FramedConnection,
    MessageSet,
    ProtocolError,
)

SETS = {"agent": AGENT_MESSAGES, "compute": COMPUTE_MESSAGES, "queue": QUEUE_MESSAGES}


def _unpickled() -> None:
    raise AssertionError("a decoder unpickled a payload it was sent")


class _Tripwire:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_unpickled, ())


TRIPWIRE = pickle.dumps(_Tripwire())

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.binary(max_size=12),
    st.just(TRIPWIRE),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
# arrays led by a code of the set (and a few beyond it), with fields of any kind and number
messages = st.builds(
    lambda code, fields: [code, *fields], st.integers(0, 28), st.lists(values, max_size=12)
)


def decode_or_refuse(set_: MessageSet[Any], payload: bytes) -> None:
    try:
        decoded = set_.decode_frame(payload)
    except ProtocolError:
        return
    for message in decoded:
        set_.encode_message(message)  # what was accepted is well-formed enough to send back


@pytest.mark.parametrize("name", SETS)
@settings(max_examples=300, deadline=None)
@given(frame=st.lists(messages, max_size=4))
def test_structured_garbage_is_refused_cleanly(name: str, frame: list[Any]) -> None:
    decode_or_refuse(SETS[name], msgpack.packb(frame, use_bin_type=True))


@pytest.mark.parametrize("name", SETS)
@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=300))
def test_arbitrary_bytes_are_refused_cleanly(name: str, payload: bytes) -> None:
    decode_or_refuse(SETS[name], payload)


def _shapes(set_: MessageSet[Any]) -> list[tuple[int, int]]:
    """``(type code, number of fields)`` of each message of ``set_``."""
    codes: dict[type[Any], int] = set_._codes  # the set's own table
    return [(code, len(dataclasses.fields(cls))) for cls, code in codes.items()]


def right_shapes(set_: MessageSet[Any]) -> st.SearchStrategy[list[Any]]:
    return st.sampled_from(_shapes(set_)).flatmap(
        lambda shape: st.lists(values, min_size=shape[1], max_size=shape[1]).map(
            lambda fields: [shape[0], *fields]
        )
    )


@pytest.mark.parametrize("name", SETS)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_messages_of_the_right_shape_with_fields_of_any_kind_are_checked(
    name: str, data: st.DataObject
) -> None:
    frame = data.draw(st.lists(right_shapes(SETS[name]), min_size=1, max_size=3))
    decode_or_refuse(SETS[name], msgpack.packb(frame, use_bin_type=True))


class _NoWriter:
    """The framed connection's writer, for a test that only reads."""

    def get_extra_info(self, name: str) -> Any:
        return None

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


async def _read_until_it_gives_up(set_: MessageSet[Any], chunks: list[bytes]) -> None:
    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    conn = FramedConnection(reader, _NoWriter(), set_)  # type: ignore[arg-type]
    for _ in range(len(chunks) + 2):  # each frame takes at least its 4-byte header
        try:
            await conn.read_batch()
        except (ProtocolError, ConnectionClosed):
            return
    raise AssertionError("the reader read more frames than the stream could hold")


framed = st.lists(messages, max_size=3).map(lambda f: msgpack.packb(f, use_bin_type=True))
streams = st.lists(
    st.one_of(
        st.binary(max_size=40),
        # a length header then (some of) a frame, or a header promising more than allowed
        framed.map(lambda body: len(body).to_bytes(4, "big") + body),
        st.integers(0, 2**32 - 1).map(lambda n: n.to_bytes(4, "big")),
        st.just((MAX_FRAME_BEFORE_AUTH + 1).to_bytes(4, "big")),
    ),
    max_size=6,
)


@pytest.mark.parametrize("name", SETS)
@settings(max_examples=200, deadline=None)
@given(chunks=streams)
def test_a_hostile_byte_stream_never_hangs_the_reader(name: str, chunks: list[bytes]) -> None:
    # a reader waiting for bytes that never come would be a hang: it must end on its own
    asyncio.run(asyncio.wait_for(_read_until_it_gives_up(SETS[name], chunks), 5))
