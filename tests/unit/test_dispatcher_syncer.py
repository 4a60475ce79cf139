"""The syncer over a real State and group committer, with a store that can refuse commits."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from corral.core.ids import NodeId, Round
from corral.core.process_states import ProcessState
from corral.dispatcher.state import State
from corral.dispatcher.syncer import Syncer
from corral.errors import StoreError
from corral.store import Change, GroupCommitter, Loaded, Table
from corral.testing import ManualClock
from corral.testing.factories import process_record
from corral.wire.messages import EXITED, Forget, Message, ProcessReport

pytestmark = pytest.mark.anyio


class RefusingStore:
    """A store that commits until ``refuse`` is set, as a deposed dispatcher's store does."""

    def __init__(self) -> None:
        self.refuse = False

    def load(self) -> Loaded:
        return Loaded(tables={table: {} for table in Table})

    def apply(self, changes: Sequence[Change]) -> None:
        if self.refuse:
            raise StoreError("this dispatcher was deposed")

    def close(self) -> None:
        pass


def exited(upid: str, round_: int) -> ProcessReport:
    return ProcessReport(upid, round_, EXITED, 42, 0, None, None, 1.0, 2.0)


async def syncer_over(store: RefusingStore) -> tuple[Syncer, State, list[Message]]:
    committer = GroupCommitter(store)
    await committer.start()
    state = State(committer, lambda error: None)
    running = process_record(
        "p1", state=ProcessState.RUNNING, round=Round(1), assigned=NodeId("n1")
    )
    await state.save_processes([running])
    sent: list[Message] = []
    syncer = Syncer(
        state,
        ManualClock(),
        lambda node, msg: sent.append(msg),
        lambda node, upid, round_: None,
        lambda record: None,
        lambda: None,
    )
    return syncer, state, sent


async def test_an_end_is_forgotten_on_the_agent_once_it_is_committed() -> None:
    store = RefusingStore()
    syncer, state, sent = await syncer_over(store)
    syncer.reports(NodeId("n1"), [exited("p1", 1)])
    await state.flush()
    assert sent == [Forget("p1", 1)]


async def test_an_end_whose_commit_failed_is_not_forgotten_on_the_agent() -> None:
    # The agent must go on reporting the end to whichever dispatcher loads the store next.
    store = RefusingStore()
    syncer, state, sent = await syncer_over(store)
    store.refuse = True
    syncer.reports(NodeId("n1"), [exited("p1", 1)])
    with pytest.raises(StoreError):
        await state.flush()
    assert sent == []
