"""The pid journal: what an agent reads back after a restart is what it recorded, however the
file was cut, compacted or left by an older agent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.agent import pidfiles
from corral.agent.pidfiles import PidJournal, PidRecord


def record(pid: int, round_: int = 1) -> PidRecord:
    return PidRecord(f"p{pid}", round_, pid, 0, 1.5, 1000 + pid)


def lines(pids_dir: Path) -> list[bytes]:
    return (pids_dir / pidfiles.JOURNAL).read_bytes().splitlines()


# start a batch of pids, end one pid, or restart the agent (reopen the journal)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("start"), st.lists(st.integers(2, 40), min_size=1, max_size=5)),
        st.tuples(st.just("end"), st.integers(2, 40)),
        st.tuples(st.just("reopen"), st.none()),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=_ops)
def test_a_reopened_journal_holds_exactly_the_live_records(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, object]]
) -> None:
    pids_dir = tmp_path_factory.mktemp("pids")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pidfiles, "COMPACT_AFTER", 6)  # rewrites happen within a few ops
        journal = PidJournal(pids_dir)
        live: dict[int, PidRecord] = {}
        rounds = 0
        for op, arg in ops:
            if op == "start":
                assert isinstance(arg, list)
                rounds += 1
                batch = {pid: record(pid, rounds) for pid in arg}
                journal.started(batch.items())
                live.update(batch)
            elif op == "end":
                assert isinstance(arg, int)
                journal.ended(arg)
                journal.flush()
                live.pop(arg, None)
            else:
                journal.close()
                journal = PidJournal(pids_dir)
            assert journal.records() == live
            # compaction keeps the file near its live lines, whatever the history
            assert len(lines(pids_dir)) <= 2 * len(live) + 6 + 2 * 5 + 2
        journal.close()
        assert PidJournal(pids_dir).records() == live


def test_ends_wait_for_a_flush_or_the_next_start(tmp_path: Path) -> None:
    journal = PidJournal(tmp_path)
    journal.started([(7, record(7)), (8, record(8))])
    journal.ended(7)
    assert PidJournal(tmp_path).records() == {7: record(7), 8: record(8)}  # not written yet
    journal.started([(9, record(9))])  # the end goes with the next start, in one write
    assert PidJournal(tmp_path).records() == {8: record(8), 9: record(9)}


def test_a_line_cut_by_a_crash_is_skipped_and_what_follows_is_kept(tmp_path: Path) -> None:
    journal = PidJournal(tmp_path)
    journal.started([(7, record(7))])
    journal.close()
    whole = b"+" + json.dumps({"pid": 8, **record(8).as_doc()}).encode()
    with (tmp_path / pidfiles.JOURNAL).open("ab") as file:
        file.write(whole[: len(whole) // 2])  # the agent died in the middle of this write

    reopened = PidJournal(tmp_path)
    assert reopened.records() == {7: record(7)}
    reopened.started([(9, record(9))])  # must not land on the cut line's tail
    reopened.close()
    assert PidJournal(tmp_path).records() == {7: record(7), 9: record(9)}


def test_a_reused_pid_is_the_newest_record(tmp_path: Path) -> None:
    journal = PidJournal(tmp_path)
    journal.started([(7, record(7, 1))])
    journal.started([(7, record(7, 2))])  # its end was lost in a crash; the pid came back
    assert PidJournal(tmp_path).records() == {7: record(7, 2)}


def test_records_an_older_agent_kept_one_file_each_are_taken_in(tmp_path: Path) -> None:
    (tmp_path / "7").write_text(json.dumps(record(7).as_doc()))
    (tmp_path / "8").write_text("not json")
    (tmp_path / ".9.tmp").write_text("{")  # an older agent died while writing it

    journal = PidJournal(tmp_path)
    assert journal.records() == {7: record(7)}
    assert sorted(p.name for p in tmp_path.iterdir()) == [pidfiles.JOURNAL]
    journal.close()
    assert PidJournal(tmp_path).records() == {7: record(7)}


def test_clear_leaves_nothing(tmp_path: Path) -> None:
    journal = PidJournal(tmp_path)
    journal.started([(7, record(7))])
    journal.clear()
    journal.close()
    assert list(tmp_path.iterdir()) == []
    assert PidJournal(tmp_path).records() == {}


def test_a_long_running_agent_keeps_its_journal_small(tmp_path: Path) -> None:
    journal = PidJournal(tmp_path)
    journal.started([(2, record(2))])  # a service that runs throughout
    for pid in range(3, 3 + 3 * pidfiles.COMPACT_AFTER):
        journal.started([(pid, record(pid))])
        journal.ended(pid)
        journal.flush()
    assert len(lines(tmp_path)) <= pidfiles.COMPACT_AFTER + 3
    journal.close()
    assert PidJournal(tmp_path).records() == {2: record(2)}
