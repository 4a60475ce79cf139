"""The framework's rules in one process: conditions, the error hook, no-event events, and
monitoring a directory for new files."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from corral.pipeline import (
    EXIT_EVENT,
    Arguments,
    BasePipeline,
    BasePrimitive,
    Framework,
    FrameworkConfig,
)
from corral.pipeline.pipeline import TableEntry


class Checked(BasePrimitive):
    """Performs only for even numbers; its post-condition refuses 4."""

    def _pre_condition(self) -> bool:
        return bool(self.action.args.n % 2 == 0)

    def _perform(self) -> Any:
        return Arguments(n=self.action.args.n * 10)

    def _post_condition(self) -> bool:
        return bool(self.action.args.n != 4)


class Conditions(BasePipeline):
    event_table: ClassVar[dict[str, TableEntry]] = {
        "number": ("checked", "checked", "record"),
        "record": ("record", "recorded", None),
        "idle": ("idle", "idle", None),
    }

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.recorded: list[int] = []
        self.errors: list[str] = []
        self.idle_calls = 0

    def checked(self, action: Any, context: Any) -> Any:
        return Checked(action, context)()

    def record(self, action: Any, context: Any) -> None:
        self.recorded.append(action.args.n)

    def idle(self, action: Any, context: Any) -> None:
        self.idle_calls += 1
        if self.idle_calls == 3:
            context.push_event(EXIT_EVENT)

    def on_error(self, action: Any, context: Any, error: BaseException) -> None:
        self.errors.append(f"{action.event} {action.args.n}: {error}")


def test_a_failed_pre_condition_skips_and_a_failed_post_condition_is_an_error() -> None:
    framework = Framework(Conditions, FrameworkConfig(event_timeout=0.05))
    for n in (1, 2, 3, 4):
        framework.append_event("number", Arguments(n=n))
    framework.start()
    pipeline = framework.pipeline
    assert isinstance(pipeline, Conditions)
    assert pipeline.recorded == [20]  # 1 and 3 skipped, 4 failed its post-condition
    assert pipeline.errors == ["number 4: Checked: post-condition failed"]


def test_the_no_event_event_comes_when_the_queue_is_empty() -> None:
    config = FrameworkConfig(event_timeout=0.05, no_event_event="idle", no_event_wait_time=0.01)
    framework = Framework(Conditions, config)
    framework.start()  # idles three times, then its action asks to exit
    pipeline = framework.pipeline
    assert isinstance(pipeline, Conditions)
    assert pipeline.idle_calls == 3
    assert framework.context.state == "idle"


class Files(BasePipeline):
    event_table: ClassVar[dict[str, TableEntry]] = {"next_file": ("seen", "seen", None)}

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.names: list[str] = []

    def seen(self, action: Any, context: Any) -> None:
        self.names.append(Path(action.args.name).name)
        if len(self.names) == 3:
            context.push_event(EXIT_EVENT)


def test_a_monitored_directory_feeds_new_files_as_they_come(tmp_path: Path) -> None:
    (tmp_path / "a.fits").write_bytes(b"")
    (tmp_path / "skip.txt").write_bytes(b"")
    config = FrameworkConfig(event_timeout=0.05, monitor_interval=0.05)
    framework = Framework(Files, config)
    framework.ingest_data(tmp_path, monitor=True)

    def later() -> None:
        time.sleep(0.3)
        (tmp_path / "b.fits").write_bytes(b"")
        (tmp_path / "c.fits").write_bytes(b"")

    writer = threading.Thread(target=later)
    writer.start()
    framework.start(continuous=True)
    writer.join()
    assert framework.data_set is not None
    assert sorted(row["name"] for row in framework.data_set.rows) == ["a.fits", "b.fits", "c.fits"]
    pipeline = framework.pipeline
    assert isinstance(pipeline, Files)
    assert sorted(pipeline.names) == ["a.fits", "b.fits", "c.fits"]


def test_a_shared_exit_event_stops_one_worker_and_is_consumed(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = FrameworkConfig(
        want_multiprocessing=True,
        queue_manager_portnr=port,
        state_dir=str(tmp_path),
        event_timeout=0.05,
    )
    framework = Framework(Conditions, config)
    try:
        framework.append_event(EXIT_EVENT)  # hosts the queue, as the first process does
        framework.append_event("number", Arguments(n=2))
        framework.start()  # stops at the exit event, before the number
        assert framework.handled == 0
        pending, held = framework._connect().listing(framework.queue_name)
        assert ([e.name for e in pending], held) == (["number"], [])
    finally:
        framework.close()
