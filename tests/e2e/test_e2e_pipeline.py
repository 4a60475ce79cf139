"""``corral pipeline`` from the shell: events listed and added, workers scaled as processes."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits

from conftest import CONFIG, Served, user_env

pytestmark = pytest.mark.timeout(90)
EXAMPLE = "corral.pipeline.examples.fits2png"


def _ok(run: Any) -> Any:
    assert run.code == 0, str(run)
    assert "Traceback" not in run.out + run.err, str(run)
    return run


def test_events_are_added_listed_and_handled_by_scaled_workers(
    cli: Any, served: Served, tmp_path: Path
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tmp_path / "config.cfg"
    config.write_text(
        "[DEFAULT]\nwant_multiprocessing = True\n"
        f"queue_manager_portnr = {port}\nstate_dir = {tmp_path / 'state'}\n"
        f"output_directory = {tmp_path / 'out'}\nevent_timeout = 0.3\n"
    )
    images = []
    for i in range(3):
        images.append(tmp_path / f"sky{i}.fits")
        fits.PrimaryHDU(np.arange(64, dtype="float32").reshape(8, 8) * (i + 1)).writeto(images[-1])
    host = subprocess.Popen(
        [sys.executable, "-m", "corral", "pipeline", "run", EXAMPLE, "-c", str(config), "-s"],
        env=user_env(served.home),
        stderr=subprocess.DEVNULL,
    )
    try:
        served.wait_until(lambda: (tmp_path / "state" / "queue_secret").exists(), "the queue")
        for image in images:
            args = json.dumps({"name": str(image)})
            _ok(cli(f"pipeline add-event {EXAMPLE} next_file '{args}' -c {config}"))
        pending = _ok(cli(f"pipeline events {EXAMPLE} -c {config} --json")).json()
        assert [(e["status"], e["name"]) for e in pending] == [("pending", "next_file")] * 3
        assert "pending" in _ok(cli(f"pipeline events {EXAMPLE} -c {config}")).out

        _ok(cli(f"pipeline scale {EXAMPLE} -c {config} --workers 2"))
        upids = ["pipeline-Fits2PngPipeline-w0", "pipeline-Fits2PngPipeline-w1"]
        for upid in upids:
            assert _ok(cli(f"process wait {upid} --state RUNNING")).code == 0
        served.wait_until(
            lambda: len(list((tmp_path / "out").glob("*.png"))) == 3, "three PNGs", timeout=60
        )
        assert _ok(cli(f"pipeline events {EXAMPLE} -c {config} --json")).json() == []

        _ok(cli(f"pipeline scale {EXAMPLE} -c {config} --workers 0"))
        for upid in upids:
            record = _ok(cli(f"process wait {upid} --json")).json()
            assert record["state"] == "700-TERMINATED"

        # automatic: up with the queue's depth, down once it is empty
        auto = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "corral",
                "pipeline",
                "scale",
                EXAMPLE,
                "-c",
                str(config),
                "--auto",
                "--max",
                "2",
                "--per-worker",
                "1",
                "--cooldown",
                "0",
                "--interval",
                "0.2",
            ],
            env=user_env(served.home),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            for image in images:
                image.with_name(image.stem + "b.fits").write_bytes(image.read_bytes())
                args = json.dumps({"name": str(image.with_name(image.stem + "b.fits"))})
                _ok(cli(f"pipeline add-event {EXAMPLE} next_file '{args}' -c {config}"))
            served.wait_until(
                lambda: len(list((tmp_path / "out").glob("*b.png"))) == 3, "3 more", timeout=60
            )

            def workers() -> list[str]:
                listed = _ok(cli("process list --json")).json()
                return [p["state"] for p in listed if p["upid"] in upids]

            served.wait_until(
                lambda: workers() and all(s == "700-TERMINATED" for s in workers()),
                "the workers to be stopped once the queue is empty",
                timeout=30,
            )
        finally:
            auto.send_signal(signal.SIGINT)
            out, _ = auto.communicate(timeout=20)
        assert "→ 2 workers" in out
        assert "→ 0 workers" in out

        refused = cli(f"pipeline add-event {EXAMPLE} next_file '[1]' -c {config}")
        assert refused.code == 1
        assert refused.err.strip() == (
            'error: ARGS must be a JSON object, like \'{"name": "a.fits"}\''
        )
    finally:
        host.send_signal(signal.SIGINT)
        host.wait(20)


def test_the_dispatcher_hosts_the_queue_in_its_own_store(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    home = tmp_path / "home"
    served = Served(home, CONFIG)
    served.argv += ["--queue", f"127.0.0.1:{port}"]
    served.start()
    config = tmp_path / "config.cfg"
    config.write_text(
        "[DEFAULT]\nwant_multiprocessing = True\n"
        f"queue_manager_portnr = {port}\nstate_dir = {home}\n"
        f"output_directory = {tmp_path / 'out'}\nevent_timeout = 0.3\n"
    )

    def corral(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "corral", *args],
            env=user_env(home),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    try:
        image = tmp_path / "in" / "sky.fits"
        image.parent.mkdir()
        fits.PrimaryHDU(np.ones((4, 4), dtype="float32")).writeto(image)
        added = corral(
            "pipeline",
            "add-event",
            EXAMPLE,
            "next_file",
            json.dumps({"name": str(image)}),
            "-c",
            str(config),
        )
        assert added.returncode == 0, added.stderr
        served.kill()  # SIGKILL: the event is in the dispatcher's store
        served.start()
        listed = corral("pipeline", "events", EXAMPLE, "-c", str(config), "--json")
        assert [e["name"] for e in json.loads(listed.stdout)] == ["next_file"], listed.stderr
        ran = corral("pipeline", "run", EXAMPLE, "-c", str(config), "-w")
        assert ran.returncode == 0, ran.stderr
        assert (tmp_path / "out" / "sky.png").exists()
        assert not (home / "queue.db").exists()  # no queue server but the dispatcher's
    finally:
        served.stop()
