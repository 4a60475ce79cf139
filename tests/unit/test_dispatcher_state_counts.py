"""The state's running counts (processes by state, the planner's tally of the queue, the ended
processes) match its records after any changes, and readers see only what is committed."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from collections.abc import AsyncIterator, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.core.ids import NodeId, Upid
from corral.core.planner import demand_key
from corral.core.process_states import ProcessState
from corral.dispatcher.state import State
from corral.store import Change, GroupCommitter, Loaded, Store, Table
from corral.testing.factories import process_record


class NullStore:
    """Commits everything, keeps nothing."""

    def load(self) -> Loaded:
        return Loaded(tables={table: {} for table in Table})

    def apply(self, changes: Sequence[Change]) -> None:
        pass

    def free_space(self) -> int | None:
        return None

    def close(self) -> None:
        pass


@contextlib.asynccontextmanager
async def running_state(store: Store | None = None) -> AsyncIterator[State]:
    committer = GroupCommitter(store or NullStore())
    await committer.start()
    try:
        yield State(committer, on_fatal=lambda error: None)
    finally:
        await committer.aclose()


_CONSTRAINTS = {"a": {}, "b": {}, "c": {"zone": "x"}, "d": {"zone": ["x", "y"]}}

changes = st.lists(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.sampled_from(list(ProcessState))),
        min_size=1,
        max_size=4,
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(changes)
def test_by_state_counts_every_process_once_in_its_current_state(batches):
    async def scenario() -> None:
        async with running_state() as state:
            for batch in batches:
                records = {
                    upid: process_record(
                        upid,
                        state=s,
                        assigned=NodeId("n1"),
                        constraints=_CONSTRAINTS[upid],  # fixed per process, as once scheduled
                    )
                    for upid, s in batch
                }
                await state.save_processes(records.values())
                expected = Counter(r.state for r in state.processes.values())
                assert +state.by_state == expected
                queued = Counter(demand_key(p) for p in state.queue.values())
                assert {demand_key(d): n for d, n in state.demand.groups()} == queued

    asyncio.run(scenario())


@settings(max_examples=60, deadline=None)
@given(changes, st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=4))
def test_ended_processes_are_listed_and_forgetting_takes_only_them(batches, forget):
    async def scenario() -> None:
        async with running_state() as state:
            for batch in batches:
                # a change that keeps its state (same round and state) counts as one too
                records = {upid: process_record(upid, state=s) for upid, s in batch}
                await state.save_processes(records.values())
                ended = {u for u, r in state.processes.items() if r.state.is_terminal}
                assert set(state.ended) == ended
                assert all(state.settled(upid) for upid in state.processes)
                assert state.stored_counts() == +state.by_state  # nothing in flight
            before = dict(state.processes)
            forgotten, committed = state.forget_processes(forget)
            await committed
            ended_asked = {u for u in forget if u in before and before[u].state.is_terminal}
            assert forgotten == len(ended_asked)
            for upid, record in before.items():
                gone = upid in forget and record.state.is_terminal
                assert (upid not in state.processes) == gone
                assert (upid in state.ended) == (record.state.is_terminal and not gone)
                if gone:
                    assert state.history.of(upid) == []
            assert +state.by_state == Counter(r.state for r in state.processes.values())

    asyncio.run(scenario())


class GatedStore(NullStore):
    """Commits only while its gate is open."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()

    def apply(self, changes: Sequence[Change]) -> None:
        assert self.gate.wait(10)


def test_readers_are_shown_what_the_store_holds_never_a_change_in_flight():
    async def scenario() -> None:
        store = GatedStore()
        async with running_state(store) as state:
            waiting = process_record("a", state=ProcessState.WAITING)
            await state.save_processes([waiting])
            assert state.stored(Upid("a")) == waiting
            store.gate.clear()
            running = process_record("a", state=ProcessState.RUNNING, assigned=NodeId("n1"))
            newcomer = process_record("b", state=ProcessState.WAITING)
            in_flight = state.save_processes([running, newcomer])
            assert state.processes[Upid("a")] == running  # the loops see it at once
            assert state.stored(Upid("a")) == waiting  # readers do not, yet
            assert state.stored(Upid("b")) is None
            assert list(state.stored_processes()) == [waiting]
            assert state.stored_counts() == Counter({ProcessState.WAITING: 1})
            store.gate.set()
            await in_flight
            assert state.stored(Upid("a")) == running
            assert list(state.stored_processes()) == [running, newcomer]
            assert state.stored_counts() == Counter([ProcessState.RUNNING, ProcessState.WAITING])

    asyncio.run(scenario())
