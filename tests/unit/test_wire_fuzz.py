"""Every wire decoder (agent, compute, queue) on hostile input: messages of its own set, or
a ``ProtocolError``; nothing else escapes and nothing is unpickled."""

from __future__ import annotations

from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.compute.messages import COMPUTE_MESSAGES
from corral.queue.messages import QUEUE_MESSAGES
from corral.wire.codec import AGENT_MESSAGES, MessageSet, ProtocolError

SETS = {"agent": AGENT_MESSAGES, "compute": COMPUTE_MESSAGES, "queue": QUEUE_MESSAGES}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.binary(max_size=12),
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
    lambda code, fields: [code, *fields], st.integers(0, 24), st.lists(values, max_size=12)
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
