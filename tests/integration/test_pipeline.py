"""Pipelines in one process and across processes sharing a durable queue.

The four work scenarios of the DRP framework run on its FITS example and must produce every
PNG exactly once; a worker killed mid-event has its event handled by another; a process with
a wrong auth code is refused. Processes are real ``corral pipeline run`` commands.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits

from corral.pipeline import Arguments, BasePipeline, Framework, FrameworkConfig
from corral.pipeline.examples.fits2png import Fits2PngPipeline

EXAMPLE = "corral.pipeline.examples.fits2png"
HERE = Path(__file__).parent


def fits_files(directory: Path, count: int, prefix: str = "img") -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    paths = []
    for i in range(count):
        path = directory / f"{prefix}{i}.fits"
        fits.PrimaryHDU(rng.normal(100, 15, (24, 32)).astype("float32")).writeto(path)
        paths.append(path)
    return paths


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.cfg"
    path.write_text(
        "[DEFAULT]\n"
        "want_multiprocessing = True\n"
        f"queue_manager_portnr = {free_port()}\n"
        f"output_directory = {tmp_path / 'out'}\n"
        f"state_dir = {tmp_path / 'state'}\n"
        "event_timeout = 0.3\n"
        "visibility_timeout = 2\n"
        f"marks = {tmp_path / 'marks'}\n"
        "slow_suffix = slow\n"
        "slow_seconds = 30\n"
    )
    return path


class Processes:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.running: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, *args: str | Path) -> subprocess.Popen[bytes]:
        log = self.tmp_path / f"run{len(self.running)}.log"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "corral", "pipeline", "run", *map(str, args)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
            )
        self.running.append((proc, log))
        return proc

    def wait(self, proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
        return proc.wait(timeout)

    def saved(self) -> Counter[str]:
        found: Counter[str] = Counter()
        for _, log in self.running:
            for line in log.read_text().splitlines():
                if " saved " in line:
                    found[line.rpartition(" saved ")[2]] += 1
        return found

    def stop(self) -> None:
        for proc, _ in self.running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc, _ in self.running:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    running = Processes(tmp_path)
    yield running
    running.stop()


def listening(config: Path, timeout: float = 20) -> None:
    port = int(FrameworkConfig.read(config).queue_manager_portnr)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


def pngs(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "out").glob("*.png"))


def expected(files: list[Path]) -> list[str]:
    return sorted(f"{p.stem}.png" for p in files)


def test_single_process_mode_turns_every_image_into_a_png(tmp_path: Path) -> None:
    files = fits_files(tmp_path / "in", 6)
    config = FrameworkConfig(output_directory=str(tmp_path / "out"), event_timeout=0.1)
    framework = Framework(Fits2PngPipeline, config)
    framework.ingest_data(tmp_path / "in")
    framework.start()
    assert pngs(tmp_path) == expected(files)
    assert framework.handled == 18  # three steps per image
    assert framework.context.state == "saved"
    assert [row["name"] for row in framework.data_set.rows] == [p.name for p in files]
    assert framework.data_set.rows[0]["NAXIS1"] == 32


def test_one_process_in_multiprocess_mode_hosts_ingests_and_works(
    tmp_path: Path, config: Path, procs: Processes
) -> None:
    files = fits_files(tmp_path / "in", 6)
    assert procs.wait(procs.start(EXAMPLE, "-c", config, "-d", tmp_path / "in")) == 0
    assert pngs(tmp_path) == expected(files)
    assert set(procs.saved().values()) == {1}


def test_one_manager_and_several_workers(tmp_path: Path, config: Path, procs: Processes) -> None:
    files = fits_files(tmp_path / "in", 12)
    manager = procs.start(EXAMPLE, "-c", config, "-d", tmp_path / "in")
    listening(config)
    workers = [procs.start(EXAMPLE, "-c", config) for _ in range(2)]
    assert [procs.wait(p) for p in [manager, *workers]] == [0, 0, 0]
    assert pngs(tmp_path) == expected(files)
    assert sum(procs.saved().values()) == 12
    assert set(procs.saved().values()) == {1}


def test_a_queue_host_several_managers_and_workers(
    tmp_path: Path, config: Path, procs: Processes
) -> None:
    files = fits_files(tmp_path / "a", 4, "a") + fits_files(tmp_path / "b", 4, "b")
    host = procs.start(EXAMPLE, "-c", config, "-s")
    listening(config)
    managers = [procs.start(EXAMPLE, "-c", config, "-i", "-d", tmp_path / d) for d in "ab"]
    assert [procs.wait(m) for m in managers] == [0, 0]
    workers = [procs.start(EXAMPLE, "-c", config) for _ in range(2)]
    assert [procs.wait(w) for w in workers] == [0, 0]
    assert pngs(tmp_path) == expected(files)
    assert set(procs.saved().values()) == {1}
    assert host.poll() is None  # the queue's host runs until it is stopped


def test_workers_wait_for_a_manager_that_ingests_later(
    tmp_path: Path, config: Path, procs: Processes
) -> None:
    procs.start(EXAMPLE, "-c", config, "-s")
    listening(config)
    workers = [procs.start(EXAMPLE, "-c", config, "-w") for _ in range(2)]
    time.sleep(1.0)
    assert [w.poll() for w in workers] == [None, None]  # waiting, not gone
    files = fits_files(tmp_path / "in", 6)
    assert procs.wait(procs.start(EXAMPLE, "-c", config, "-i", "-d", tmp_path / "in")) == 0
    assert [procs.wait(w) for w in workers] == [0, 0]
    assert pngs(tmp_path) == expected(files)
    assert set(procs.saved().values()) == {1}


def marks(tmp_path: Path) -> list[tuple[str, str, int]]:
    path = tmp_path / "marks"
    lines = path.read_text().split("\n") if path.exists() else []
    return [(kind, name, int(pid)) for kind, name, pid in (ln.split() for ln in lines if ln)]


def test_a_worker_killed_mid_event_has_its_event_handled_by_another(
    tmp_path: Path, config: Path, procs: Processes
) -> None:
    spec = "pipelines.marked:MarkedPipeline"
    procs.start(spec, "-c", config, "-s")
    listening(config)
    names = ["a", "b", "c.slow", "d"]
    for name in names:
        (tmp_path / name).touch()
    doomed = procs.start(spec, "-c", config, "-w")
    ingest = procs.start(spec, "-c", config, "-i", *(tmp_path / n for n in names))
    assert procs.wait(ingest) == 0
    deadline = time.monotonic() + 30
    while not any(kind == "started" and name.endswith("slow") for kind, name, _ in marks(tmp_path)):
        assert time.monotonic() < deadline, marks(tmp_path)
        time.sleep(0.05)
    doomed.kill()  # SIGKILL, mid-event
    doomed.wait()
    Path(config).write_text(
        Path(config).read_text().replace("slow_seconds = 30", "slow_seconds = 0")
    )
    survivor = procs.start(spec, "-c", config, "-W")  # continuous: it waits for the return

    def finished() -> list[str]:
        return [Path(n).name for kind, n, _ in marks(tmp_path) if kind == "done"]

    while sorted(finished()) != sorted(names):
        assert time.monotonic() < deadline + 30, marks(tmp_path)
        assert survivor.poll() is None
        time.sleep(0.05)
    time.sleep(0.5)  # nothing more comes
    done = Counter(Path(name).name for kind, name, _ in marks(tmp_path) if kind == "done")
    assert sorted(done) == sorted(names)
    assert set(done.values()) == {1}  # nothing lost, nothing done twice
    started_slow = [
        pid for kind, name, pid in marks(tmp_path) if kind == "started" and name.endswith("slow")
    ]
    assert started_slow[0] == doomed.pid
    assert started_slow[1] == survivor.pid


def test_a_process_with_a_wrong_auth_code_is_refused(
    tmp_path: Path, config: Path, procs: Processes
) -> None:
    procs.start(EXAMPLE, "-c", config, "-s")
    listening(config)
    wrong = tmp_path / "wrong.cfg"
    wrong.write_text(config.read_text() + "queue_manager_auth_code = guessed\n")
    intruder = procs.start(EXAMPLE, "-c", wrong, "-i", *fits_files(tmp_path / "in", 1))
    assert procs.wait(intruder) == 1
    assert "wrong secret" in procs.running[-1][1].read_text()


class Steps(BasePipeline):
    event_table = {
        "start": ("first", "one", "second"),
        "second": ("fails", "two", "never"),
        "tick": (None, "ticked", None),
    }

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.seen: list[str] = []
        self.errors: list[str] = []

    def first(self, action: Any, context: Any) -> Any:
        self.seen.append(f"first {action.args.n}")
        return Arguments(n=action.args.n + 1)

    def fails(self, action: Any, context: Any) -> Any:
        self.seen.append(f"fails {action.args.n}")
        raise ValueError("broken")

    def never(self, action: Any, context: Any) -> Any:
        raise AssertionError("no next event after a failure")

    def on_error(self, action: Any, context: Any, error: BaseException) -> None:
        self.errors.append(f"{action.event}: {error}")


def test_follow_ups_carry_the_output_and_failures_reach_the_error_hook() -> None:
    framework = Framework(Steps, FrameworkConfig(event_timeout=0.05))
    framework.append_event("start", Arguments(n=1))
    framework.append_event("tick", {"x": 1}, recurrent=True)
    framework.append_event("unknown")
    pipeline = framework.pipeline
    assert isinstance(pipeline, Steps)
    framework.append_event("exit")  # the recurrent tick goes back behind it
    framework.start()
    assert pipeline.seen == ["first 1", "fails 2"]
    assert pipeline.errors == ["second: broken"]
    assert framework.context.state == "ticked"


def test_corral_queue_serve_hosts_the_queue_alone(
    tmp_path: Path, config: Path, procs: Processes
) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    server = subprocess.Popen(
        [sys.executable, "-m", "corral", "queue", "serve", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().startswith("serving the event queue on 127.0.0.1:")
        files = fits_files(tmp_path / "in", 3)
        assert procs.wait(procs.start(EXAMPLE, "-c", config, "-d", tmp_path / "in")) == 0
        assert pngs(tmp_path) == expected(files)
        assert (tmp_path / "state" / "queue.db").exists()
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=20)
    assert server.returncode == 0


def test_the_shared_queue_can_live_in_postgresql(
    tmp_path: Path, config: Path, procs: Processes, postgres: Any
) -> None:
    url = postgres.database()
    config.write_text(config.read_text() + f"queue_store = {url}\n")
    files = fits_files(tmp_path / "in", 4)
    manager = procs.start(EXAMPLE, "-c", config, "-d", tmp_path / "in")
    listening(config)
    worker = procs.start(EXAMPLE, "-c", config)
    assert [procs.wait(manager), procs.wait(worker)] == [0, 0]
    assert pngs(tmp_path) == expected(files)
    assert not (tmp_path / "state" / "queue.db").exists()
    import psycopg

    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)
