"""The queues' truth in memory: pending events in order, held events by holder (pure, no I/O).

Every operation returns the store changes that make it durable; the server commits them
before it answers. An event is *pending* (in its queue, oldest first) or *held* by exactly one
client. A holder that goes away keeps its events for the visibility timeout, then they are
pending again at the front of their queue, with one more attempt counted: an event is never
lost, and never held by two clients at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from corral.queue.messages import NewEvent, QueuedEvent
from corral.store.base import Change, Delete, Put, Table


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
        return {
            "q": self.queue,
            "n": self.name,
            "a": self.args,
            "r": self.recurrent,
            "t": self.attempts,
            "h": self.holder,
        }

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
        """Rebuild from the store; events held before a restart stay with their holders for
        ``grace`` seconds, so that a holder still at work can come back and finish them."""
        book = cls()
        for key in sorted(docs):
            doc = docs[key]
            event = Event(
                int(key), doc["q"], doc["n"], doc["a"], bool(doc["r"]), int(doc["t"]), doc["h"]
            )
            book._next_id = max(book._next_id, event.id + 1)
            if event.holder is None:
                book._queue(event.queue).append(event)
            else:
                book._hold(event, event.holder)
                book._away[event.holder] = now + grace
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

    def take(self, queue: str, holder: str, limit: int) -> tuple[list[Event], list[Change]]:
        pending = self._pending.get(queue)
        events: list[Event] = []
        while pending and len(events) < limit:
            event = pending.popleft()
            self._hold(event, holder)
            events.append(event)
        return events, [e.put() for e in events]

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
            if event.recurrent:
                event.attempts = 0
                self._queue(event.queue).append(event)
                changes.append(event.put())
            else:
                changes.append(Delete(Table.EVENTS, event.key))
        return refused, changes

    def release(self, holder: str, ids: Iterable[int]) -> tuple[list[int], list[Change]]:
        """Give events back unhandled, to the front of their queues, in their order."""
        refused: list[int] = []
        back: list[Event] = []
        for event_id in ids:
            event = self._held.get(event_id)
            if event is None or event.holder != holder:
                refused.append(event_id)
            else:
                back.append(event)
        return refused, self._requeue(back, count_attempt=False)

    def _requeue(self, events: list[Event], count_attempt: bool) -> list[Change]:
        for event in sorted(events, key=lambda e: e.id, reverse=True):
            self._unhold(event)
            event.attempts += count_attempt
            self._queue(event.queue).appendleft(event)
        return [e.put() for e in events]

    def away(self, holder: str, until: float) -> None:
        """The holder's connection is gone: its events return at ``until`` unless it is back."""
        if holder in self._by_holder:
            self._away[holder] = until

    def back(self, holder: str) -> None:
        self._away.pop(holder, None)

    def expire(self, now: float) -> tuple[set[str], list[Change]]:
        """Return the events of holders away past their time; the queues that got events."""
        gone = [holder for holder, until in self._away.items() if until <= now]
        queues: set[str] = set()
        changes: list[Change] = []
        for holder in gone:
            del self._away[holder]
            events = [self._held[i] for i in self._by_holder.get(holder, ())]
            queues.update(e.queue for e in events)
            changes += self._requeue(events, count_attempt=True)
        return queues, changes

    def listing(self, queue: str) -> tuple[list[Event], list[Event]]:
        held = sorted((e for e in self._held.values() if e.queue == queue), key=lambda e: e.id)
        return list(self._pending.get(queue, ())), held
