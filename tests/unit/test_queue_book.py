"""The queues' book: order, holding, giving back, and what reaches the store."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from corral.queue.book import QueueBook
from corral.queue.messages import NewEvent
from corral.store.base import Change, Delete, Put


def new(*names: str, recurrent: bool = False) -> list[NewEvent]:
    return [NewEvent(name, "{}", recurrent) for name in names]


def test_events_are_taken_in_order_and_held_by_one_client() -> None:
    book = QueueBook()
    events, changes = book.put("q", new("a", "b", "c"))
    assert [e.id for e in events] == [1, 2, 3]
    assert all(isinstance(c, Put) for c in changes)
    taken, _ = book.take("q", "w1", 2)
    assert [(e.name, e.holder) for e in taken] == [("a", "w1"), ("b", "w1")]
    assert [e.name for e in book.take("q", "w2", 5)[0]] == ["c"]
    assert book.take("q", "w2", 5)[0] == []
    refused, changes = book.ack("w2", [1, 3])
    assert refused == [1]  # w1 holds it
    assert changes == [Delete(changes[0].table, "00000000000000000003")]


def test_released_and_expired_events_go_back_to_the_front_in_order() -> None:
    book = QueueBook()
    book.put("q", new("a", "b", "c", "d"))
    book.take("q", "w1", 2)
    book.release("w1", [2, 1])
    assert [e.name for e in book.listing("q")[0]] == ["a", "b", "c", "d"]
    book.take("q", "w1", 2)
    book.away("w1", until=10.0)
    assert book.expire(9.0) == (set(), [])
    book.back("w1")
    assert book.expire(11.0) == (set(), [])  # it came back in time
    book.away("w1", until=12.0)
    queues, changes = book.expire(12.0)
    assert queues == {"q"}
    pending, held = book.listing("q")
    assert ([e.name for e in pending], held) == (["a", "b", "c", "d"], [])
    assert [e.attempts for e in pending] == [1, 1, 0, 0]
    assert len(changes) == 2


def test_a_recurrent_event_goes_to_the_back_once_handled() -> None:
    book = QueueBook()
    book.put("q", new("tick", recurrent=True) + new("work"))
    (tick,) = book.take("q", "w", 1)[0]
    refused, changes = book.ack("w", [tick.id])
    assert refused == []
    assert isinstance(changes[0], Put)
    assert [e.name for e in book.listing("q")[0]] == ["work", "tick"]


def test_the_store_rebuilds_the_book_and_held_events_wait_for_their_holder() -> None:
    book = QueueBook()
    store: dict[str, dict[str, Any]] = {}

    def commit(changes: list[Change]) -> None:
        for change in changes:
            if isinstance(change, Put):
                store[change.key] = dict(change.doc)
            else:
                store.pop(change.key, None)

    commit(book.put("q", new("a", "b", "c"))[1])
    commit(book.take("q", "w1", 1)[1])
    again = QueueBook.load(store, now=100.0, grace=30.0)
    pending, held = again.listing("q")
    assert ([e.name for e in pending], [(e.name, e.holder) for e in held]) == (
        ["b", "c"],
        [("a", "w1")],
    )
    assert again.put("q", new("d"))[0][0].id == 4
    assert again.expire(129.0)[1] == []
    assert again.expire(130.0)[0] == {"q"}
    assert [e.name for e in again.listing("q")[0]] == ["a", "b", "c", "d"]


ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(1, 3)),
        st.tuples(st.just("take"), st.sampled_from(["w1", "w2"]), st.integers(1, 3)),
        st.tuples(st.just("ack"), st.sampled_from(["w1", "w2"]), st.integers(1, 12)),
        st.tuples(st.just("release"), st.sampled_from(["w1", "w2"]), st.integers(1, 12)),
        st.tuples(st.just("away"), st.sampled_from(["w1", "w2"])),
        st.tuples(
            st.just("expire"),
        ),
    ),
    max_size=40,
)


@given(ops)
def test_every_event_is_pending_or_held_once_and_the_store_agrees(script: list[Any]) -> None:
    book = QueueBook()
    store: dict[str, dict[str, Any]] = {}
    acked: set[int] = set()
    made = 0
    for op in script:
        if op[0] == "put":
            events, changes = book.put("q", new(*["e"] * op[1]))
            made += len(events)
        elif op[0] == "take":
            changes = book.take("q", op[1], op[2])[1]
        elif op[0] in ("ack", "release"):
            operation = book.ack if op[0] == "ack" else book.release
            refused, changes = operation(op[1], [op[2]])
            if op[0] == "ack" and not refused:
                acked.add(op[2])
        elif op[0] == "away":
            book.away(op[1], until=0.0)
            changes = []
        else:
            changes = book.expire(1.0)[1]
        for change in changes:
            if isinstance(change, Put):
                store[change.key] = dict(change.doc)
            else:
                store.pop(change.key, None)
    pending, held = book.listing("q")
    ids = [e.id for e in pending] + [e.id for e in held]
    assert len(ids) == len(set(ids))
    assert set(ids) | acked == set(range(1, made + 1))
    assert all(e.holder is None for e in pending)
    assert all(e.holder is not None for e in held)
    assert {int(k) for k in store} == set(ids)
    assert {int(k): v["h"] for k, v in store.items()} == {e.id: e.holder for e in pending + held}
