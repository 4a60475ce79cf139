"""``corral serve`` listens on loopback unless told otherwise, loudly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CONFIG, Served, user_env


@pytest.mark.parametrize(
    "args",
    [["--listen", "0.0.0.0:0"], ["--listen", "127.0.0.1:0", "--queue", "[::]:0"]],
    ids=["api", "queue"],
)
def test_binding_beyond_loopback_is_refused_without_the_flag(
    tmp_path: Path, args: list[str]
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "corral", "serve", "--home", str(tmp_path), *args],
        env=user_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "refusing to listen beyond loopback" in done.stderr
    assert "--allow-remote" in done.stderr
    assert not (tmp_path / "url").exists()


def test_the_flag_lets_the_api_listen_on_every_interface(tmp_path: Path) -> None:
    served = Served(tmp_path / "home", CONFIG)
    served.argv = [
        *(a if a != "127.0.0.1:0" else "0.0.0.0:0" for a in served.argv),
        "--allow-remote",
    ]
    served.start()
    try:
        assert served.url.startswith("http://")
        with served.http() as client:
            assert client.get("/health").status_code == 200
    finally:
        served.stop()
