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
    taken = book.take("q", "w1", 2)
    assert [(e.name, e.holder) for e in taken] == [("a", "w1"), ("b", "w1")]
    assert [e.name for e in book.take("q", "w2", 5)] == ["c"]
    assert book.take("q", "w2", 5) == []
    refused, changes = book.ack("w2", [1, 3])
    assert refused == [1]  # w1 holds it
    assert changes == [Delete(changes[0].table, "00000000000000000003")]


def test_released_and_expired_events_go_back_to_the_front_in_order() -> None:
    book = QueueBook()
    book.put("q", new("a", "b", "c", "d"))
    book.take("q", "w1", 2)
    assert book.release("w1", [2, 1, 3]) == [3]
    assert [e.name for e in book.listing("q")[0]] == ["a", "b", "c", "d"]
    book.take("q", "w1", 2)
    book.away("w1", until=10.0)
    assert book.expire(9.0) == set()
    book.back("w1")
    assert book.expire(11.0) == set()  # it came back in time
    book.away("w1", until=12.0)
    assert book.expire(12.0) == {"q"}
    pending, held = book.listing("q")
    assert ([e.name for e in pending], held) == (["a", "b", "c", "d"], [])
    assert [e.attempts for e in pending] == [1, 1, 0, 0]


def test_a_recurrent_event_goes_to_the_back_once_handled() -> None:
    book = QueueBook()
    book.put("q", new("tick", recurrent=True) + new("work"))
    (tick,) = book.take("q", "w", 1)
    refused, changes = book.ack("w", [tick.id])
    assert refused == []
    assert [type(c) for c in changes] == [Delete, Put]  # under a new id, at the back
    assert [(e.name, e.id) for e in book.listing("q")[0]] == [("work", 2), ("tick", 3)]


def test_after_a_restart_events_wait_for_their_holders_to_claim_them() -> None:
    book = QueueBook()
    store: dict[str, dict[str, Any]] = {}

    def commit(changes: list[Change]) -> None:
        for change in changes:
            if isinstance(change, Put):
                store[change.key] = dict(change.doc)
            else:
                store.pop(change.key, None)

    commit(book.put("q", new("a", "b", "c"))[1])
    (held,) = book.take("q", "w1", 1)
    again = QueueBook.load(store, now=100.0, grace=30.0)
    assert again.listing("q")[0] == []  # every event waits for a claim, or the grace
    assert again.take("q", "w2", 5) == []
    assert again.claim("w1", [held.id, 99]) == [99]
    assert again.put("q", new("d"))[0][0].id == 4
    assert again.expire(129.0) == set()
    assert again.expire(130.0) == {"q"}
    pending, still = again.listing("q")
    assert [(e.name, e.attempts) for e in pending] == [("b", 0), ("c", 0), ("d", 0)]
    assert [(e.name, e.holder) for e in still] == [("a", "w1")]
    assert again.claim("w2", [2]) == []  # pending again: claiming takes it
    assert again.claim("w3", [2]) == [2]  # w2 holds it


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
            book.take("q", op[1], op[2])
            changes = []
        elif op[0] == "ack":
            refused, changes = book.ack(op[1], [op[2]])
            if not refused:
                acked.add(op[2])
        elif op[0] == "release":
            book.release(op[1], [op[2]])
            changes = []
        elif op[0] == "away":
            book.away(op[1], until=0.0)
            changes = []
        else:
            book.expire(1.0)
            changes = []
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
    assert {int(k) for k in store} == set(ids)  # the store knows what exists, not who holds it
