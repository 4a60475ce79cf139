"""The queues' truth in memory: pending events in order, held events by holder (pure, no I/O).

An event is *pending* (in its queue, oldest first) or *held* by exactly one client. A holder
that goes away keeps its events for the visibility timeout, then they are pending again at the
front of their queue, with one more attempt counted: an event is never lost, and never held
by two clients at once.

What is durable is which events exist (put, then deleted once handled): the operations that
change that return the store changes to commit before the server answers. Who holds what is
kept in memory only, which spares a write per take. So after a restart every event is held by
the server's previous life (``PREVIOUS``) for the visibility timeout: a client still at work
claims what it holds (``claim``), and the rest become pending when that time is up.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from corral.queue.messages import NewEvent, QueuedEvent
from corral.store.base import Change, Delete, Put, Table

#: the holder of every event just after a restart, until its real holder claims it
PREVIOUS = ""


@dataclass(slots=True)
class Event:
    id: int
    queue: str
    name: str
    args: str
    recurrent: bool
    attempts: int = 0
    holder: str | None = None

    @property
    def key(self) -> str:
        return event_key(self.id)

    def doc(self) -> dict[str, Any]:
        return {"q": self.queue, "n": self.name, "a": self.args, "r": self.recurrent}

    def put(self) -> Put:
        return Put(Table.EVENTS, self.key, self.doc())

    def wire(self) -> QueuedEvent:
        return QueuedEvent(
            self.id, self.queue, self.name, self.args, self.recurrent, self.attempts, self.holder
        )


def event_key(event_id: int) -> str:
    """Zero-padded, so that the store's keys sort as the ids do."""
    return f"{event_id:020d}"


class QueueBook:
    def __init__(self) -> None:
        self._pending: dict[str, deque[Event]] = {}
        self._held: dict[int, Event] = {}
        self._by_holder: dict[str, set[int]] = {}
        #: holders away, and when their events go back to their queues
        self._away: dict[str, float] = {}
        self._next_id = 1

    @classmethod
    def load(cls, docs: Mapping[str, Mapping[str, Any]], now: float, grace: float) -> QueueBook:
        """Rebuild from the store: every event is held by ``PREVIOUS`` for ``grace`` seconds,
        so that a client still at work on one can come back and claim it."""
        book = cls()
        for key in sorted(docs):
            doc = docs[key]
            event = Event(int(key), doc["q"], doc["n"], doc["a"], bool(doc["r"]))
            book._next_id = max(book._next_id, event.id + 1)
            book._hold(event, PREVIOUS)
        if book._held:
            book._away[PREVIOUS] = now + grace
        return book

    def _queue(self, queue: str) -> deque[Event]:
        found = self._pending.get(queue)
        if found is None:
            found = self._pending[queue] = deque()
        return found

    def _hold(self, event: Event, holder: str) -> None:
        event.holder = holder
        self._held[event.id] = event
        self._by_holder.setdefault(holder, set()).add(event.id)

    def _unhold(self, event: Event) -> None:
        if event.holder is not None:
            ids = self._by_holder.get(event.holder)
            if ids is not None:
                ids.discard(event.id)
                if not ids:
                    del self._by_holder[event.holder]
        self._held.pop(event.id, None)
        event.holder = None

    # --- operations ----------------------------------------------------------------------------

    def put(self, queue: str, items: Iterable[NewEvent]) -> tuple[list[Event], list[Change]]:
        events = []
        for item in items:
            event = Event(self._next_id, queue, item.name, item.args, item.recurrent)
            self._next_id += 1
            self._queue(queue).append(event)
            events.append(event)
        return events, [e.put() for e in events]

    def pending_count(self, queue: str) -> int:
        found = self._pending.get(queue)
        return len(found) if found else 0

    def take(self, queue: str, holder: str, limit: int) -> list[Event]:
        pending = self._pending.get(queue)
        events: list[Event] = []
        while pending and len(events) < limit:
            event = pending.popleft()
            self._hold(event, holder)
            events.append(event)
        return events

    def claim(self, holder: str, ids: Iterable[int]) -> list[int]:
        """A client back after a restart holds these again; returns those it cannot have
        (handled by now, or given to another client)."""
        refused = []
        for event_id in ids:
            event = self._held.get(event_id)
            if event is None:
                event = self._pending_event(event_id)
                if event is None:
                    refused.append(event_id)
                    continue
                self._pending[event.queue].remove(event)
            elif event.holder not in (PREVIOUS, holder):
                refused.append(event_id)
                continue
            self._unhold(event)
            self._hold(event, holder)
        return refused

    def _pending_event(self, event_id: int) -> Event | None:
        # only after a restart, for the few events clients claim: a scan is enough
        for pending in self._pending.values():
            for event in pending:
                if event.id == event_id:
                    return event
        return None

    def ack(self, holder: str, ids: Iterable[int]) -> tuple[list[int], list[Change]]:
        """Forget handled events (a recurrent one goes to the back of its queue); returns the
        ids this holder does not hold, and the changes."""
        refused: list[int] = []
        changes: list[Change] = []
        for event_id in ids:
            event = self._held.get(event_id)
            if event is None or event.holder != holder:
                refused.append(event_id)
                continue
            self._unhold(event)
            changes.append(Delete(Table.EVENTS, event.key))
            if event.recurrent:  # to the back: a new id, so that a reload keeps the order
                again = Event(self._next_id, event.queue, event.name, event.args, True)
                self._next_id += 1
                self._queue(again.queue).append(again)
                changes.append(again.put())
        return refused, changes

    def release(self, holder: str, ids: Iterable[int]) -> list[int]:
        """Give events back unhandled, to the front of their queues, in their order; returns
        the ids this holder does not hold."""
        refused: list[int] = []
        back: list[Event] = []
        for event_id in ids:
            event = self._held.get(event_id)
            if event is None or event.holder != holder:
                refused.append(event_id)
            else:
                back.append(event)
        self._requeue(back, count_attempt=False)
        return refused

    def _requeue(self, events: list[Event], count_attempt: bool) -> None:
        for event in sorted(events, key=lambda e: e.id, reverse=True):
            self._unhold(event)
            event.attempts += count_attempt
            self._queue(event.queue).appendleft(event)

    def away(self, holder: str, until: float) -> None:
        """The holder's connection is gone: its events return at ``until`` unless it is back."""
        if holder in self._by_holder:
            self._away[holder] = until

    def back(self, holder: str) -> None:
        self._away.pop(holder, None)

    def expire(self, now: float) -> set[str]:
        """Return the events of holders away past their time; the queues that got events."""
        gone = [holder for holder, until in self._away.items() if until <= now]
        queues: set[str] = set()
        for holder in gone:
            del self._away[holder]
            events = [self._held[i] for i in self._by_holder.get(holder, ())]
            queues.update(e.queue for e in events)
            # a restart is no failed attempt: the events were merely not yet claimed
            self._requeue(events, count_attempt=holder != PREVIOUS)
        return queues

    def queue_names(self) -> list[str]:
        """Every queue that has pending or held events (and those that had some)."""
        return sorted(set(self._pending) | {e.queue for e in self._held.values()})

    def listing(self, queue: str) -> tuple[list[Event], list[Event]]:
        held = sorted((e for e in self._held.values() if e.queue == queue), key=lambda e: e.id)
        return list(self._pending.get(queue, ())), held
