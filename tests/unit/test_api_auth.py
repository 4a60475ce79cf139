"""The token file: created private and atomically, refused when others can read it."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.errors import CorralError
from corral.secretfile import load_or_create_token


@pytest.fixture
def open_umask() -> Iterator[None]:
    # the most permissive umask: the file must be private anyway
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_token_is_created_private_and_then_reused(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "home" / "token"
    token = load_or_create_token(path)
    assert len(token) >= 40
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert load_or_create_token(path) == token
    assert sorted(p.name for p in path.parent.iterdir()) == ["token"]  # no temporary left


def test_an_existing_private_token_is_read(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("  mine\n")
    path.chmod(0o600)
    assert load_or_create_token(path) == "mine"


@pytest.mark.parametrize("bits", [0o644, 0o640, 0o604, 0o620])
def test_a_token_file_others_can_access_is_refused_naming_it(tmp_path: Path, bits: int) -> None:
    path = tmp_path / "token"
    path.write_text("secret")
    path.chmod(bits)
    with pytest.raises(CorralError, match=f"chmod 600 {path}") as caught:
        load_or_create_token(path)
    assert str(path) in caught.value.message


def test_an_empty_token_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.touch(mode=0o600)
    with pytest.raises(CorralError, match="is empty"):
        load_or_create_token(path)


def test_an_unreadable_token_path_is_a_corral_error(tmp_path: Path) -> None:
    (tmp_path / "token").mkdir()
    with pytest.raises(CorralError, match="cannot read the token file"):
        load_or_create_token(tmp_path / "token")


def test_when_another_process_creates_it_first_its_token_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "token"
    real_link = os.link

    def racing_link(source: Path, target: Path) -> None:
        # the other process links its file in between our write and our link
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"theirs\n")
        os.close(fd)
        real_link(source, target)

    monkeypatch.setattr(os, "link", racing_link)
    assert load_or_create_token(path) == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["token"]


def test_each_node_has_a_token_of_its_own_that_reveals_nothing_of_the_secret() -> None:
    from corral.secretfile import node_token

    token = node_token("the-secret", "node-a")
    assert token == node_token("the-secret", "node-a")  # derived, so nothing is stored
    assert token != node_token("the-secret", "node-b")
    assert token != node_token("another-secret", "node-a")
    assert "the-secret" not in token
    assert len(token) == 64
