"""Where the clients find the dispatcher and the token: argument, environment, home files."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral import AsyncClient, Client
from corral.client import _requests


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path))
    monkeypatch.delenv("CORRAL_URL", raising=False)
    monkeypatch.delenv("CORRAL_TOKEN", raising=False)
    return tmp_path


def test_with_nothing_configured_the_url_is_the_loopback_default(home: Path) -> None:
    assert _requests.discover_url() == "http://127.0.0.1:7480"
    assert _requests.discover_token() is None


def test_the_home_files_written_by_serve_are_used(home: Path) -> None:
    (home / "url").write_text("http://127.0.0.1:9999/\n")
    (home / "token").write_text("from-file\n")
    assert _requests.discover_url() == "http://127.0.0.1:9999"
    assert _requests.discover_token() == "from-file"


def test_the_environment_beats_the_home_files(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (home / "url").write_text("http://file:1")
    (home / "token").write_text("from-file")
    monkeypatch.setenv("CORRAL_URL", "http://env:2")
    monkeypatch.setenv("CORRAL_TOKEN", "from-env")
    assert _requests.discover_url() == "http://env:2"
    assert _requests.discover_token() == "from-env"


def test_arguments_beat_everything(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_URL", "http://env:2")
    monkeypatch.setenv("CORRAL_TOKEN", "from-env")
    assert _requests.discover_url("http://arg:3") == "http://arg:3"
    assert _requests.discover_token("from-arg") == "from-arg"


def test_home_defaults_to_dot_corral_in_the_user_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORRAL_HOME", raising=False)
    monkeypatch.setenv("HOME", "/somewhere")
    assert _requests.corral_home() == Path("/somewhere/.corral")


def test_an_empty_or_unreadable_home_file_is_skipped(home: Path) -> None:
    (home / "url").write_text("  \n")
    (home / "token").mkdir()
    assert _requests.discover_url() == _requests.DEFAULT_URL
    assert _requests.discover_token() is None


def test_both_clients_discover_the_same_way(home: Path) -> None:
    (home / "url").write_text("http://127.0.0.1:1234")
    (home / "token").write_text("tok")
    with Client() as client:
        assert client.url == "http://127.0.0.1:1234"
        assert client._http.headers["authorization"] == "Bearer tok"
    aio = AsyncClient()
    assert aio.url == "http://127.0.0.1:1234"
    assert aio._http.headers["authorization"] == "Bearer tok"
