"""open_store: which URLs name which backend, and errors that say what is supported."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from corral.errors import InvalidRequest, StoreError
from corral.store import SQLiteStore, open_store


@pytest.mark.parametrize(
    ("url", "relative_path"),
    [
        ("sqlite:///{tmp}/a.db", "a.db"),
        ("sqlite:relative.db", "relative.db"),
        ("sqlite:sub/dir.sqlite", "sub/dir.sqlite"),
        ("{tmp}/bare.db", "bare.db"),
        ("bare.sqlite", "bare.sqlite"),
    ],
)
def test_sqlite_urls_and_bare_paths_open_a_sqlite_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, relative_path: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    store = open_store(url.format(tmp=tmp_path))
    try:
        assert isinstance(store, SQLiteStore)
        assert store.path.resolve() == tmp_path / relative_path
        assert store.synchronous == "FULL"
        assert (tmp_path / relative_path).is_file()
    finally:
        store.close()


def test_a_sqlite_url_may_relax_synchronous(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/a.db?synchronous=NORMAL")
    try:
        assert isinstance(store, SQLiteStore)
        assert store.synchronous == "NORMAL"
    finally:
        store.close()


def test_an_unreachable_postgresql_is_named_without_its_password() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(
        StoreError, match=r"cannot open store postgresql://corral:\*\*\*@"
    ) as caught:
        open_store(f"postgresql://corral:hunter2@127.0.0.1:{port}/corral")
    assert "hunter2" not in caught.value.message


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://db/corral", "unknown kind of store URL.*supported: sqlite:///"),
        ("store.txt", "unknown kind of store URL"),
        ("sqlite://host/a.db", "has no host.*three slashes"),
        ("sqlite:", "names no file"),
        ("sqlite:///{tmp}/a.db?synchronous=OFF", "synchronous=NORMAL"),
        ("sqlite:///{tmp}/a.db?cache=shared", "only sqlite option"),
    ],
)
def test_an_unusable_url_names_the_field_and_what_is_supported(
    tmp_path: Path, url: str, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message) as caught:
        open_store(url.format(tmp=tmp_path))
    assert caught.value.field == "store"
    assert not list(tmp_path.iterdir())
