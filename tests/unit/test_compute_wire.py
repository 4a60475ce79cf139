"""The compute protocol's messages, code shipping and worker settings, without processes."""

from __future__ import annotations

import pickle
import sys
import types

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.compute import code as codec
from corral.compute.messages import (
    COMPUTE_MESSAGES,
    Done,
    File,
    Hello,
    Run,
    Setup,
    ToMailbox,
    ToTask,
)
from corral.compute.worker import WorkerSettings
from corral.wire.codec import ProtocolError

blobs = st.binary(max_size=64)
ids = st.integers(0, 2**63 - 1)
messages = st.one_of(
    st.builds(Run, ids, ids, blobs, st.booleans()),
    st.builds(Done, ids, st.booleans(), blobs, st.text(max_size=40)),
    st.builds(ToTask, ids, blobs),
    st.builds(ToMailbox, ids, blobs),
    st.builds(
        Setup,
        st.text(max_size=10),
        st.text(max_size=10),
        st.lists(st.builds(File, st.text(max_size=10), blobs), max_size=3),
        st.lists(st.text(max_size=10), max_size=3),
        blobs,
        st.floats(0.01, 100),
    ),
)


@given(st.lists(messages, max_size=8))
def test_every_message_survives_a_frame(batch: list[object]) -> None:
    frame = COMPUTE_MESSAGES.encode_frame(batch)  # type: ignore[arg-type]
    assert COMPUTE_MESSAGES.decode_frame(frame[4:]) == batch


def test_a_field_of_the_wrong_type_is_refused_by_name() -> None:
    item = [1, 1, "c", "w", "n", 7, "not bytes"]  # Hello with a str nonce
    with pytest.raises(ProtocolError, match=r"Hello.nonce: expected bytes, got str"):
        COMPUTE_MESSAGES.decode_message(item)
    assert COMPUTE_MESSAGES.decode_message([1, 1, "c", "w", "n", 7, b"x"]) == Hello(
        1, "c", "w", "n", 7, b"x"
    )


def square(x: int) -> int:
    return x * x


class Point:
    def __init__(self, x: int) -> None:
        self.x = x


def test_code_travels_by_value_and_shipped_classes_resolve_plain_pickles() -> None:
    blob = codec.dumps_code({1: square, 2: Point})
    # this module cannot be imported where the blob is loaded: pretend so here
    saved = sys.modules.pop(__name__)
    try:
        shipped = codec.Shipped()
        loaded = shipped.loads(blob)
        for obj in loaded.values():
            shipped.add(obj)
    finally:
        sys.modules[__name__] = saved
    assert loaded[1](7) == 49
    point = shipped.loads(pickle.dumps(Point(3)))
    assert point.x == 3
    assert type(point) is loaded[2]


def test_a_name_the_worker_cannot_resolve_says_to_ship_it() -> None:
    blob = pickle.dumps(Point(1)).replace(
        __name__.encode(), b"nowhere_to_be_found"[: len(__name__)]
    )
    with pytest.raises(ImportError, match=r"list it .* in the computation's components"):
        codec.Shipped().loads(blob)


def test_data_falls_back_to_cloudpickle_for_lambdas() -> None:
    assert codec.loads(codec.dumps({"a": 1})) == {"a": 1}
    assert codec.loads(codec.dumps(lambda: 5))() == 5


def test_packages_cannot_be_shipped_as_modules() -> None:
    package = types.ModuleType("pkg")
    package.__file__ = "/somewhere/pkg/__init__.py"
    with pytest.raises(ValueError, match="module pkg is not a single source file"):
        codec.component_files([package], 1 << 20)
    with pytest.raises(ValueError, match="component /no/such/file"):
        codec.component_files(["/no/such/file"], 1 << 20)


def test_worker_settings_name_what_is_missing() -> None:
    own = {"address": "127.0.0.1:9", "computation": "c", "secret": "s", "pulse_interval": 1}
    settings = WorkerSettings.from_configuration({"compute": own}, "w")
    assert (settings.host, settings.port, settings.pool) == ("127.0.0.1", 9, "")
    pool = {"pool": "p", "secret": "s", "pulse_interval": 0.5}
    assert WorkerSettings.from_configuration({"compute": pool}, "w").listen == "127.0.0.1"
    with pytest.raises(ValueError, match=r"configuration.compute is missing"):
        WorkerSettings.from_configuration({}, "w")
    with pytest.raises(ValueError, match=r"configuration.compute.secret is missing"):
        WorkerSettings.from_configuration({"compute": {"pool": "p"}}, "w")
    with pytest.raises(ValueError, match=r"configuration.compute: "):
        WorkerSettings.from_configuration({"compute": {**own, "address": "h:port"}}, "w")
