"""The log spool: output written on tmpfs reaches the disk log whole, once, and in order."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.agent import logs
from corral.agent.logs import LogSpool
from corral.agent.pidfiles import prepare_state_dir, remove_runtime_dirs


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """A state directory whose spool links to a fresh directory on tmpfs."""
    runtime = Path(os.environ["XDG_RUNTIME_DIR"]) / f"spool-{os.getpid()}-{time.monotonic_ns()}"
    state = tmp_path / "state"
    prepare_state_dir(state, runtime)
    yield state
    remove_runtime_dirs(state)


def write(fd: int, data: bytes) -> None:
    """What a process does with the descriptor it was given."""
    os.write(fd, data)


def read_all(spool: LogSpool, upid: str, stream: str = "stdout") -> bytes:
    chunk = spool.read_chunk(1, upid, stream, 0, 1 << 20)
    assert chunk.error is None
    return chunk.data


def test_the_spool_is_on_tmpfs_and_a_silent_process_costs_no_disk_file(state_dir: Path) -> None:
    spool = LogSpool(state_dir)
    assert spool.spooled
    out, err = spool.open("quiet")
    os.close(out)
    os.close(err)
    spool.settle("quiet")
    assert os.listdir(state_dir / "logs") == []
    assert os.listdir(state_dir / "spool") == []
    assert read_all(spool, "quiet") == b""


def test_output_is_readable_at_once_and_on_disk_after_the_round(state_dir: Path) -> None:
    spool = LogSpool(state_dir)
    out, err = spool.open("p")
    write(out, b"hello\n")
    write(err, b"oops\n")
    # Nothing spilled yet: a reader still sees it, from the spool.
    assert not (state_dir / "logs/p.stdout").exists()
    assert read_all(spool, "p") == b"hello\n"
    assert spool.read_chunk(2, "p", "stdout", 2, 2).data == b"ll"
    os.close(out)
    os.close(err)
    spool.settle("p")
    assert (state_dir / "logs/p.stdout").read_bytes() == b"hello\n"
    assert (state_dir / "logs/p.stderr").read_bytes() == b"oops\n"
    assert os.listdir(state_dir / "spool") == []


def test_a_running_process_is_spilled_and_its_copied_pages_are_freed(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = LogSpool(state_dir)
    out, err = spool.open("chatty")
    block = b"x" * (1 << 20)
    for _ in range(4):
        write(out, block)
    monkeypatch.setattr(logs.time, "monotonic", lambda: time.time() + 3600)
    spool.spill_due()
    disk = state_dir / "logs/chatty.stdout"
    assert disk.stat().st_size == 4 << 20
    spooled = os.stat(state_dir / "spool/chatty.stdout")
    assert spooled.st_size == 4 << 20  # offsets kept...
    assert spooled.st_blocks * 512 < 64 << 10  # ...but the memory given back
    write(out, b"tail\n")
    assert spool.read_chunk(1, "chatty", "stdout", (4 << 20) - 1, 100).data == b"xtail\n"
    os.close(out)
    os.close(err)
    spool.settle("chatty")
    assert disk.stat().st_size == (4 << 20) + 5
    assert disk.read_bytes().endswith(b"xtail\n")


def test_a_new_round_appends_after_the_disk_log(state_dir: Path) -> None:
    spool = LogSpool(state_dir)
    for round_ in range(3):
        out, err = spool.open("svc")
        write(out, f"round {round_}\n".encode())
        os.close(out)
        os.close(err)
        spool.settle("svc")
    assert (state_dir / "logs/svc.stdout").read_text() == "round 0\nround 1\nround 2\n"


def test_a_round_started_before_the_last_one_settled_keeps_its_spool(state_dir: Path) -> None:
    spool = LogSpool(state_dir)
    first, first_err = spool.open("svc")
    second, second_err = spool.open("svc")
    write(first, b"one\n")
    spool.settle("svc")  # the first round ends; the second still writes to the same spool
    write(second, b"two\n")
    for fd in (first, first_err, second, second_err):
        os.close(fd)
    spool.settle("svc")
    assert (state_dir / "logs/svc.stdout").read_bytes() == b"one\ntwo\n"


def test_a_spill_cut_short_by_a_crash_resumes_where_the_disk_log_ends(state_dir: Path) -> None:
    spool = LogSpool(state_dir)
    out, err = spool.open("p")
    write(out, b"0123456789")
    os.close(out)
    os.close(err)
    # A previous agent copied four bytes and died before the rest.
    (state_dir / "logs/p.stdout").write_bytes(b"0123")
    restarted = LogSpool(state_dir)
    restarted.recover()
    assert (state_dir / "logs/p.stdout").read_bytes() == b"0123456789"
    assert os.listdir(state_dir / "spool") == []


def test_recovery_leaves_the_spool_of_an_adopted_process_in_place(state_dir: Path) -> None:
    spool = LogSpool(state_dir)
    out, err = spool.open("adopted")
    write(out, b"before the restart\n")
    restarted = LogSpool(state_dir)
    restarted.adopt("adopted")
    restarted.recover()
    write(out, b"after\n")  # the process still holds its descriptor
    os.close(out)
    os.close(err)
    restarted.settle("adopted")
    assert (state_dir / "logs/adopted.stdout").read_bytes() == b"before the restart\nafter\n"


def test_without_a_runtime_dir_processes_write_straight_to_disk(tmp_path: Path) -> None:
    state = tmp_path / "state"
    prepare_state_dir(state, None)
    spool = LogSpool(state)
    assert not spool.spooled
    out, err = spool.open("p")
    write(out, b"direct\n")
    assert (state / "logs/p.stdout").read_bytes() == b"direct\n"
    os.close(out)
    os.close(err)
    spool.settle("p")
    assert read_all(spool, "p") == b"direct\n"


def test_a_disk_error_keeps_the_output_in_the_spool_for_a_retry(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = LogSpool(state_dir)
    out, err = spool.open("p")
    write(out, b"precious\n")
    os.close(out)
    os.close(err)

    def disk_full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(logs, "_write_all", disk_full)
    spool.settle("p")
    assert (state_dir / "spool/p.stdout").read_bytes() == b"precious\n"
    assert read_all(spool, "p") == b"precious\n"
    monkeypatch.undo()
    monkeypatch.setattr(logs.time, "monotonic", lambda: time.time() + 3600)
    spool.spill_due()
    assert (state_dir / "logs/p.stdout").read_bytes() == b"precious\n"
    assert os.listdir(state_dir / "spool") == []


def numbered(lines: range) -> bytes:
    return b"".join(b"line %08d\n" % i for i in lines)


@pytest.mark.parametrize("spooled", [True, False], ids=["spooled", "direct"])
def test_a_chatty_log_keeps_its_newest_bytes_and_its_offsets(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spooled: bool
) -> None:
    if not spooled:
        state_dir = tmp_path / "direct"
        prepare_state_dir(state_dir, None)
    keep = 64 << 10
    spool = LogSpool(state_dir, max_bytes=keep)
    assert spool.spooled is spooled
    out, err = spool.open("svc")
    written = b""
    hours = itertools.count(1)  # every look finds every log due
    monkeypatch.setattr(logs.time, "monotonic", lambda: time.time() + 3600 * next(hours))
    for start in range(0, 200_000, 20_000):  # 2.8 MB, looked at ten times on the way
        chunk = numbered(range(start, start + 20_000))
        write(out, chunk)
        written += chunk
        spool.spill_due()
    disk = os.stat(state_dir / "logs/svc.stdout")
    assert disk.st_size == len(written)  # offsets stay: the process appends where it did
    assert disk.st_blocks * 512 <= keep + spool._slack + (64 << 10)  # the disk share is held
    first = spool.read_chunk(1, "svc", "stdout", 0, 1 << 20)
    assert first.data == b""
    assert len(written) - keep - spool._slack - 4096 <= first.next_offset
    assert first.next_offset <= len(written) - keep
    kept = b""
    offset = first.next_offset
    while chunk_data := spool.read_chunk(2, "svc", "stdout", offset, 1 << 16).data:
        kept += chunk_data
        offset += len(chunk_data)
    assert kept == written[first.next_offset :]  # the newest bytes, exactly
    write(out, b"more\n")  # a process appending after a drop lands at the end
    os.close(out)
    os.close(err)
    spool.settle("svc")
    assert spool.read_chunk(3, "svc", "stdout", len(written), 100).data == b"more\n"


def test_a_log_without_a_limit_keeps_everything(state_dir: Path) -> None:
    spool = LogSpool(state_dir, max_bytes=0)
    out, err = spool.open("svc")
    written = numbered(range(100_000))
    write(out, written)
    os.close(out)
    os.close(err)
    spool.settle("svc")
    assert (state_dir / "logs/svc.stdout").read_bytes() == written
    assert read_all(spool, "svc") == written[: 1 << 20]


def age(path: Path, seconds: float) -> None:
    """Make ``path`` look last written ``seconds`` ago."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_logs_past_their_retention_go_unless_their_process_runs(state_dir: Path) -> None:
    spool = LogSpool(state_dir)
    (state_dir / "logs/running.stdout").write_bytes(b"an earlier round\n")
    running = spool.open("running")  # a new round, still running
    for upid in ("old", "fresh"):
        out, err = spool.open(upid)
        write(out, f"{upid}\n".encode())
        write(err, b"!\n")
        os.close(out)
        os.close(err)
        spool.settle(upid)
    for name in ("old.stdout", "old.stderr", "running.stdout"):
        age(state_dir / "logs" / name, 7200)
    (state_dir / "logs/notes.txt").write_text("not a log")
    age(state_dir / "logs/notes.txt", 7200)

    now = time.time()
    found = spool.past_retention(3600, now)
    assert sorted(found) == ["old.stderr", "old.stdout", "running.stdout"]
    age(state_dir / "logs/old.stderr", 60)  # written to since the look: stays
    assert spool.drop(found, 3600, now) == 1
    assert sorted(os.listdir(state_dir / "logs")) == [
        "fresh.stderr",
        "fresh.stdout",
        "notes.txt",
        "old.stderr",
        "running.stdout",
    ]
    assert read_all(spool, "old") == b""  # what is gone reads as an empty log
    for fd in running:
        os.close(fd)
