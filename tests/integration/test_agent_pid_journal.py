"""The pid journal: what an agent reads back after a restart is what it recorded (its live
children, and its ended rounds until they are forgotten), however the file was cut,
compacted or left by an older agent."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.agent import pidfiles
from corral.agent.pidfiles import Ending, Finished, PidJournal, PidRecord


def record(pid: int, round_: int = 1) -> PidRecord:
    return PidRecord(f"p{pid}", round_, pid, 0, 1.5, 1000 + pid)


def ending(code: int = 0) -> Ending:
    return Ending(code, None, None, 2.5)


def finished(journal: PidJournal) -> dict[tuple[str, int], Finished]:
    return {(f.record.upid, f.record.round): f for f in journal.finished()}


def lines(pids_dir: Path) -> list[bytes]:
    return (pids_dir / pidfiles.JOURNAL).read_bytes().splitlines()


# start a batch of pids, end one pid, forget the round of one pid, or restart the agent
# (reopen the journal)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("start"), st.lists(st.integers(2, 40), min_size=1, max_size=5)),
        st.tuples(st.just("end"), st.integers(2, 40)),
        st.tuples(st.just("forget"), st.integers(2, 40)),
        st.tuples(st.just("reopen"), st.none()),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=_ops)
def test_a_reopened_journal_holds_exactly_the_live_and_unforgotten_records(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, object]]
) -> None:
    pids_dir = tmp_path_factory.mktemp("pids")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pidfiles, "COMPACT_AFTER", 6)  # rewrites happen within a few ops
        journal = PidJournal(pids_dir)
        live: dict[int, PidRecord] = {}
        ended: dict[tuple[str, int], Finished] = {}
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
                journal.ended(arg, ending(arg))
                journal.flush()
                if arg in live:
                    gone = live.pop(arg)
                    ended[(gone.upid, gone.round)] = Finished(arg, gone, ending(arg))
            elif op == "forget":
                assert isinstance(arg, int)
                # the round the pid last ran, ended or not (a live one is never forgotten
                # by the agent, but the journal must not care)
                key = next((k for k in reversed(ended) if k[0] == f"p{arg}"), (f"p{arg}", 0))
                journal.forgotten(key)  # written with the next write, or at close
                ended.pop(key, None)
            else:
                journal.close()
                journal = PidJournal(pids_dir)
            assert journal.records() == live
            assert finished(journal) == ended
            # compaction keeps the file near its meaningful lines, whatever the history
            assert len(lines(pids_dir)) <= 2 * (len(live) + 2 * len(ended)) + 6 + 3 * 5 + 3
        journal.close()
        reopened = PidJournal(pids_dir)
        assert reopened.records() == live
        assert finished(reopened) == ended


def test_ends_wait_for_a_flush_or_the_next_start(tmp_path: Path) -> None:
    journal = PidJournal(tmp_path)
    journal.started([(7, record(7)), (8, record(8))])
    journal.ended(7, ending(3))
    assert PidJournal(tmp_path).records() == {7: record(7), 8: record(8)}  # not written yet
    journal.started([(9, record(9))])  # the end goes with the next start, in one write
    reopened = PidJournal(tmp_path)
    assert reopened.records() == {8: record(8), 9: record(9)}
    assert reopened.finished() == [Finished(7, record(7), ending(3))]


def test_an_ended_round_stays_until_forgotten_and_its_forget_waits_for_a_write(
    tmp_path: Path,
) -> None:
    journal = PidJournal(tmp_path)
    journal.started([(7, record(7, 1))])
    killed = Ending(None, 9, None, 3.0)
    journal.ended(7, killed)
    journal.flush()
    assert PidJournal(tmp_path).finished() == [Finished(7, record(7, 1), killed)]
    journal.forgotten(("p7", 1))
    assert journal.finished() == []
    # not written yet: a crash now only has the round reported once more
    assert PidJournal(tmp_path).finished() == [Finished(7, record(7, 1), killed)]
    journal.started([(8, record(8))])
    assert PidJournal(tmp_path).finished() == []
    journal.forgotten(("p8", 1))  # still running: nothing to forget
    journal.close()
    assert PidJournal(tmp_path).records() == {8: record(8)}


def test_an_older_agents_end_lines_drop_their_child(tmp_path: Path) -> None:
    old = record(7).line(7) + b"-7\n"
    (tmp_path / pidfiles.JOURNAL).write_bytes(old)
    journal = PidJournal(tmp_path)
    assert journal.records() == {}
    assert journal.finished() == []


def test_a_line_cut_by_a_crash_is_skipped_and_what_follows_is_kept(tmp_path: Path) -> None:
    journal = PidJournal(tmp_path)
    journal.started([(7, record(7))])
    journal.close()
    whole = record(8).line(8)
    with (tmp_path / pidfiles.JOURNAL).open("ab") as file:
        file.write(whole[: len(whole) // 2])  # the agent died in the middle of this write

    reopened = PidJournal(tmp_path)
    assert reopened.records() == {7: record(7)}
    reopened.started([(9, record(9))])  # must not land on the cut line's tail
    reopened.close()
    assert PidJournal(tmp_path).records() == {7: record(7), 9: record(9)}


def test_an_end_line_cut_by_a_crash_names_no_other_pid(tmp_path: Path) -> None:
    journal = PidJournal(tmp_path)
    journal.started([(12, record(12)), (123, record(123))])
    journal.close()
    with (tmp_path / pidfiles.JOURNAL).open("ab") as file:
        file.write(b"-12")  # "-123 [...]" cut after its third byte
    assert PidJournal(tmp_path).records() == {12: record(12), 123: record(123)}


def test_a_reused_pid_is_the_newest_record(tmp_path: Path) -> None:
    journal = PidJournal(tmp_path)
    journal.started([(7, record(7, 1))])
    journal.started([(7, record(7, 2))])  # its end was lost in a crash; the pid came back
    assert PidJournal(tmp_path).records() == {7: record(7, 2)}


def test_records_an_older_agent_kept_one_file_each_are_taken_in(tmp_path: Path) -> None:
    (tmp_path / "7").write_bytes(record(7).line(7)[1:])  # its JSON object alone
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
        journal.ended(pid, ending())
        journal.forgotten((f"p{pid}", 1))
        journal.flush()
    assert len(lines(tmp_path)) <= pidfiles.COMPACT_AFTER + 4
    journal.close()
    reopened = PidJournal(tmp_path)
    assert reopened.records() == {2: record(2)}
    assert reopened.finished() == []


def test_the_state_dirs_lock_waits_a_moment_for_a_reader_but_not_for_an_agent(
    tmp_path: Path,
) -> None:
    held = pidfiles.lock_state_dir(tmp_path)  # what a reader of a dead agent's journal holds
    threading.Timer(0.2, os.close, [held]).start()
    with pytest.raises(pidfiles.StateDirBusy):
        pidfiles.lock_state_dir(tmp_path)  # an agent starting does not wait
    os.close(pidfiles.lock_state_dir(tmp_path, wait=5.0))  # a reader does, and gets it
    forever = pidfiles.lock_state_dir(tmp_path)  # a live agent
    try:
        with pytest.raises(pidfiles.StateDirBusy):
            pidfiles.lock_state_dir(tmp_path, wait=0.1)
    finally:
        os.close(forever)


@settings(max_examples=100, deadline=None)
@given(
    upid=st.text(min_size=1, max_size=30),
    started_at=st.floats(0, 4e9),
    ending=st.builds(
        Ending,
        st.none() | st.integers(0, 255),
        st.none() | st.integers(1, 64),
        st.none() | st.text(max_size=40),
        st.none() | st.floats(0, 4e9),
    ),
)
def test_any_upid_and_ending_read_back_as_written(
    tmp_path_factory: pytest.TempPathFactory, upid: str, started_at: float, ending: Ending
) -> None:
    pids_dir = tmp_path_factory.mktemp("pids")
    started = PidRecord(upid, 3, 41, 7, started_at, 99)
    journal = PidJournal(pids_dir)
    journal.started([(41, started)])
    journal.ended(41, ending)
    journal.forgotten(("other", 1))
    journal.close()
    reopened = PidJournal(pids_dir)
    assert reopened.finished() == [Finished(41, started, ending)]
    reopened.forgotten((upid, 3))
    reopened.close()
    assert PidJournal(pids_dir).finished() == []
