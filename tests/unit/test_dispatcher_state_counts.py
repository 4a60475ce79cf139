"""The state's running counts (processes by state, the planner's tally of the queue) match its
records after any changes."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.core.ids import NodeId
from corral.core.planner import demand_key
from corral.core.process_states import ProcessState
from corral.dispatcher.state import State
from corral.store import Change, GroupCommitter, Loaded, Table
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
        committer = GroupCommitter(NullStore())
        await committer.start()
        state = State(committer, on_fatal=lambda error: None)
        try:
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
        finally:
            await committer.aclose()

    asyncio.run(scenario())
