"""The Server-Sent Events decoder both clients share."""

from __future__ import annotations

import pytest

from corral.client._requests import EventDecoder
from corral.errors import NotFound


def feed(lines: list[str]) -> list[dict[str, object]]:
    decoder = EventDecoder()
    return [event for line in lines if (event := decoder.feed(line)) is not None]


def test_comments_are_keep_alives_and_yield_nothing() -> None:
    assert feed([": keep-alive", "", ": keep-alive", ""]) == []


def test_each_blank_line_completes_one_event() -> None:
    lines = ['data: {"upid": "a"}', "", 'data: {"upid": "b"}', ""]
    assert feed(lines) == [{"upid": "a"}, {"upid": "b"}]


def test_data_split_over_several_lines_is_joined() -> None:
    assert feed(['data: {"upid":', 'data: "a"}', ""]) == [{"upid": "a"}]


def test_an_error_event_raises_the_error_it_carries() -> None:
    lines = [
        "event: error",
        'data: {"error": {"type": "NotFound", "message": "gone", "field": "upid"}}',
    ]
    with pytest.raises(NotFound, match="gone") as caught:
        feed([*lines, ""])
    assert caught.value.field == "upid"
