"""``corral definition`` through click's runner, against the in-process app."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio.from_thread
import pytest
import yaml
from click.testing import Result
from test_api_fake_service import FakeService, cli_runner

Run = Callable[..., Result]


@pytest.fixture
def fake() -> FakeService:
    return FakeService()


@pytest.fixture
def portal() -> Iterator[anyio.from_thread.BlockingPortal]:
    with anyio.from_thread.start_blocking_portal() as started:
        yield started


@pytest.fixture
def run(fake: FakeService, portal: anyio.from_thread.BlockingPortal) -> Run:
    return cli_runner(fake, portal)


def write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_create_from_options(run: Run, fake: FakeService) -> None:
    result = run(
        "definition", "create", "web", "--exec", "/usr/bin/python3", "--arg", "-m",
        "--arg", "http.server", "--env", "PORT=8000", "--cwd", "/srv", "--type", "exec",
        "--name", "Web", "--description", "a web server",
    )  # fmt: skip
    assert (result.exit_code, result.stdout) == (0, "created definition web\n")
    assert fake.definitions["web"] == {
        "definition_id": "web",
        "definition_type": "exec",
        "executable": {
            "exec": "/usr/bin/python3",
            "argv": ["-m", "http.server"],
            "env": {"PORT": "8000"},
            "working_directory": "/srv",
        },
        "name": "Web",
        "description": "a web server",
    }


def test_create_prints_the_definition_with_json(run: Run) -> None:
    result = run("definition", "create", "t", "--exec", "/bin/true", "--json")
    assert json.loads(result.stdout)["definition_type"] == "supd"


def test_create_from_a_file(run: Run, fake: FakeService, tmp_path: Path) -> None:
    path = write(tmp_path / "d.yaml", {"definition_id": "t", "executable": {"exec": "/bin/true"}})
    assert run("definition", "create", "--file", str(path)).exit_code == 0
    assert fake.definitions["t"]["executable"]["exec"] == "/bin/true"


@pytest.mark.parametrize(
    "args",
    [
        ("definition", "create", "t"),
        ("definition", "create", "--exec", "/bin/true"),
        ("definition", "create", "t", "--exec", "/bin/true", "--env", "NOEQUALS"),
    ],
)
def test_create_usage_errors_exit_2(run: Run, args: tuple[str, ...]) -> None:
    assert run(*args).exit_code == 2


def test_a_file_cannot_be_mixed_with_options(run: Run, tmp_path: Path) -> None:
    path = write(tmp_path / "d.yaml", {"definition_id": "t", "executable": {"exec": "/bin/true"}})
    result = run("definition", "create", "--file", str(path), "--arg", "x")
    assert result.exit_code == 2
    assert "--arg" in result.stderr


def test_a_rejected_definition_names_the_field(run: Run) -> None:
    result = run("definition", "create", "t", "--exec", "true")
    assert result.exit_code == 1
    assert result.stderr == "error: exec must be an absolute path (field: executable.exec)\n"


def test_update_describe_list_remove(run: Run) -> None:
    run("definition", "create", "t", "--exec", "/bin/true")
    assert run("definition", "update", "t", "--exec", "/bin/false").exit_code == 0
    described = run("definition", "describe", "t").stdout
    assert "executable.exec" in described
    assert "/bin/false" in described
    listed = run("definition", "list").stdout.splitlines()
    assert listed[0].split() == ["DEFINITION", "TYPE", "EXEC", "ARGV", "NAME"]
    assert listed[1].split()[:3] == ["t", "supd", "/bin/false"]
    assert yaml.safe_load(run("definition", "list", "--yaml").stdout)[0]["definition_id"] == "t"
    assert run("definition", "remove", "t").stdout == "removed definition t\n"
    assert run("definition", "describe", "t").exit_code == 1


def test_removing_a_definition_in_use_is_refused(run: Run) -> None:
    run("definition", "create", "t", "--exec", "/bin/true")
    run("process", "schedule", "p1", "t")
    result = run("definition", "remove", "t")
    assert result.exit_code == 1
    assert result.stderr == "error: definition t is used by p1\n"


# -- sync ----------------------------------------------------------------------------------


def sync_report(result: Result) -> dict[str, str]:
    assert result.exit_code == 0, result.output
    return {row["definition_id"]: row["action"] for row in json.loads(result.stdout)}


def test_sync_creates_updates_and_leaves_unchanged(run: Run, tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", {"definition_id": "a", "executable": {"exec": "/bin/a"}})
    (tmp_path / "sub").mkdir()
    pair = [
        {"definition_id": "b", "executable": {"exec": "/bin/b"}},
        {"definition_id": "c", "executable": {"exec": "/bin/c", "argv": ["x"]}},
    ]
    write(tmp_path / "sub" / "pair.yml", pair)
    (tmp_path / "notes.txt").write_text("not a definition")
    first = run("definition", "sync", str(tmp_path), "--json")
    assert sync_report(first) == {"a": "created", "b": "created", "c": "created"}
    write(tmp_path / "a.yaml", {"definition_id": "a", "executable": {"exec": "/bin/a2"}})
    second = run("definition", "sync", str(tmp_path), "--json")
    assert sync_report(second) == {"a": "updated", "b": "unchanged", "c": "unchanged"}


def test_sync_prints_a_table_by_default(run: Run, tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", {"definition_id": "a", "executable": {"exec": "/bin/a"}})
    lines = run("definition", "sync", str(path)).stdout.splitlines()
    assert lines[0].split() == ["DEFINITION", "ACTION", "DETAIL"]
    assert lines[1].split() == ["a", "created", "-"]


def test_sync_prune_removes_the_rest_but_keeps_those_in_use(run: Run, tmp_path: Path) -> None:
    for name in ("old", "busy"):
        run("definition", "create", name, "--exec", "/bin/true")
    run("process", "schedule", "p1", "busy")
    path = write(tmp_path / "a.yaml", {"definition_id": "a", "executable": {"exec": "/bin/a"}})
    result = run("definition", "sync", str(path), "--prune", "--json")
    assert sync_report(result) == {"a": "created", "old": "removed", "busy": "kept"}
    kept = [row for row in json.loads(result.stdout) if row["action"] == "kept"]
    assert kept[0]["detail"] == "definition busy is used by p1"


def test_sync_reports_a_failed_definition_and_exits_1(run: Run, tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", {"definition_id": "a", "executable": {"exec": "relative"}})
    write(tmp_path / "b.yaml", {"definition_id": "b", "executable": {"exec": "/bin/b"}})
    result = run("definition", "sync", str(tmp_path), "--json")
    assert result.exit_code == 1
    rows = {row["definition_id"]: row for row in json.loads(result.stdout)}
    assert rows["a"]["action"] == "failed"
    assert "absolute path" in rows["a"]["detail"]
    assert rows["b"]["action"] == "created"
    assert result.stderr == "error: 1 definition(s) failed to sync\n"


def test_sync_refuses_a_definition_defined_twice(run: Run, tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", {"definition_id": "a", "executable": {"exec": "/bin/a"}})
    write(tmp_path / "b.yaml", {"definition_id": "a", "executable": {"exec": "/bin/b"}})
    result = run("definition", "sync", str(tmp_path))
    assert result.exit_code == 1
    assert "definition a is in both" in result.stderr


def test_sync_refuses_a_file_with_unknown_fields(run: Run, tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", {"definition_id": "a", "exe": "/bin/a"})
    result = run("definition", "sync", str(path))
    assert result.exit_code == 1
    # the field is already in the message, so it is not repeated
    assert result.stderr == f"error: {path}: unknown fields exe\n"
