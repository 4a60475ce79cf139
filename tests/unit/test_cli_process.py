"""``corral process`` and ``corral node`` through click's runner, against the in-process app."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio.from_thread
import pytest
import yaml
from click.testing import Result
from test_api_fake_service import FakeService, cli_runner

Run = Callable[..., Result]
EXECUTABLE: dict[str, Any] = {
    "exec": "/bin/echo",
    "argv": ["hi"],
    "env": {},
    "working_directory": None,
}


@pytest.fixture
def fake() -> FakeService:
    service = FakeService()
    service.definitions["echo"] = {
        "definition_id": "echo",
        "definition_type": "supd",
        "executable": EXECUTABLE,
        "name": None,
        "description": None,
    }
    return service


@pytest.fixture
def portal() -> Iterator[anyio.from_thread.BlockingPortal]:
    with anyio.from_thread.start_blocking_portal() as started:
        yield started


@pytest.fixture
def run(fake: FakeService, portal: anyio.from_thread.BlockingPortal) -> Run:
    return cli_runner(fake, portal)


@pytest.fixture
def running(run: Run) -> Run:
    assert run("process", "schedule", "p1", "echo").exit_code == 0
    return run


def test_list_prints_a_table_by_default(running: Run) -> None:
    result = running("process", "list")
    assert result.exit_code == 0
    header, row = result.stdout.splitlines()[:2]
    assert header.split()[:3] == ["UPID", "STATE", "DEFINITION"]
    assert row.split()[:3] == ["p1", "500-RUNNING", "echo"]


def test_piped_tables_keep_each_row_on_one_line(
    fake: FakeService, portal: anyio.from_thread.BlockingPortal
) -> None:
    run = cli_runner(fake, portal, columns=None)
    assert run("process", "schedule", "a-rather-long-process-identifier", "echo").exit_code == 0
    fake.set_state("a-rather-long-process-identifier", "300-WAITING", waiting_reason="x " * 80)
    lines = run("process", "list").stdout.splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("a-rather-long-process-identifier  300-WAITING")


def test_list_prints_json_or_yaml_on_request(running: Run, fake: FakeService) -> None:
    as_json = json.loads(running("process", "list", "--json").stdout)
    as_yaml = yaml.safe_load(running("process", "list", "--yaml").stdout)
    assert as_json == as_yaml == list(fake.processes.values())


def test_json_and_yaml_together_is_a_usage_error(running: Run) -> None:
    result = running("process", "list", "--json", "--yaml")
    assert result.exit_code == 2


def test_describe_shows_fields_and_values(running: Run) -> None:
    result = running("process", "describe", "p1")
    lines = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()}
    assert lines["state"] == ["500-RUNNING"]
    assert lines["created_at"][0].count("-") == 2  # shown as a date


def test_an_error_is_one_line_on_stderr_and_exit_1(run: Run) -> None:
    result = run("process", "describe", "ghost")
    assert result.exit_code == 1
    assert result.stderr == "error: no process 'ghost' (field: upid)\n"
    assert result.stdout == ""


def test_an_internal_error_is_still_one_line(run: Run) -> None:
    result = run("process", "describe", "boom")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: internal error")
    assert "Traceback" not in result.output


def test_schedule_sends_every_option(run: Run, fake: FakeService, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("threads: 4\n")
    result = run(
        "process", "schedule", "p1", "echo",
        "--configuration", f"@{config}",
        "--constraint", "zone=a", "--constraint", "zone=b", "--constraint", "disk=ssd",
        "--queueing-mode", "start_only", "--restart-mode", "NEVER",
        "--engine", "default", "--node-exclusive", "db",
        "--subscriber", "http://hook", "--name", "echoer",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == "p1 500-RUNNING\n"
    process = fake.processes["p1"]
    assert process["configuration"] == {"threads": 4}
    assert process["constraints"] == {"zone": ["a", "b"], "disk": "ssd"}
    assert (process["queueing_mode"], process["restart_mode"]) == ("START_ONLY", "NEVER")
    assert (process["execution_engine_id"], process["node_exclusive"]) == ("default", "db")
    assert (process["subscribers"], process["name"]) == (["http://hook"], "echoer")


def test_schedule_accepts_inline_json_configuration(run: Run, fake: FakeService) -> None:
    result = run("process", "schedule", "p1", "echo", "--configuration", '{"a": [1]}')
    assert result.exit_code == 0
    assert fake.processes["p1"]["configuration"] == {"a": [1]}


def test_an_existing_process_is_scheduled_again_without_its_definition(
    run: Run, fake: FakeService
) -> None:
    assert run("process", "schedule", "p1", "echo").exit_code == 0
    again = run("process", "schedule", "p1", "--request-id", "r1")
    assert again.exit_code == 0, again.output
    assert fake.processes["p1"]["request_id"] == "r1"
    unknown = run("process", "schedule", "nope")
    assert unknown.exit_code == 1
    assert "definition_id is required" in unknown.stderr


def test_bad_configuration_is_a_usage_error(run: Run) -> None:
    result = run("process", "schedule", "p1", "echo", "--configuration", "{nope")
    assert result.exit_code == 2
    assert "--configuration" in result.stderr


def test_the_exec_shortcut_creates_then_reuses_a_definition_named_after_the_upid(
    run: Run, fake: FakeService
) -> None:
    args = ("process", "schedule", "job", "--exec", "/bin/sleep", "--arg", "5", "--env", "A=1")
    assert run(*args).exit_code == 0
    assert run(*args).exit_code == 0
    assert fake.definitions["job"]["executable"] == {
        "exec": "/bin/sleep",
        "argv": ["5"],
        "env": {"A": "1"},
        "working_directory": None,
    }
    assert [call for call in fake.calls if call[0] == "create_definition"] == [
        ("create_definition", ("job",))
    ]
    assert fake.processes["job"]["definition_id"] == "job"


def test_the_exec_shortcut_refuses_a_different_existing_definition(run: Run) -> None:
    assert run("process", "schedule", "job", "--exec", "/bin/sleep").exit_code == 0
    result = run("process", "schedule", "job", "--exec", "/bin/true")
    assert result.exit_code == 1
    assert "already exists with another executable" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("process", "schedule", "p1", "echo", "--exec", "/bin/true"),
        ("process", "schedule", "p1", "echo", "--arg", "x"),
        ("process", "schedule", "p1", "echo", "--queueing-mode", "SOMETIMES"),
    ],
)
def test_schedule_usage_errors_exit_2(run: Run, args: tuple[str, ...]) -> None:
    assert run(*args).exit_code == 2


def test_schedule_can_wait_for_a_state(run: Run) -> None:
    result = run("process", "schedule", "p1", "echo", "--wait", "RUNNING", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["state"] == "500-RUNNING"


def test_wait_prints_the_final_state(running: Run) -> None:
    result = running("process", "wait", "p1", "--state", "RUNNING")
    assert (result.exit_code, result.stdout) == (0, "500-RUNNING\n")


@pytest.mark.parametrize("state", ["850-FAILED", "900-REJECTED"])
def test_wait_exits_1_when_the_process_ends_badly(
    running: Run, fake: FakeService, state: str
) -> None:
    fake.set_state("p1", state, end_reason="exit code 3")
    result = running("process", "wait", "p1")
    assert (result.exit_code, result.stdout) == (1, f"{state}\n")
    assert result.stderr == f"error: process p1 ended {state}: exit code 3\n"


def test_wait_exits_0_when_the_process_exits_cleanly(running: Run, fake: FakeService) -> None:
    fake.set_state("p1", "800-EXITED")
    assert running("process", "wait", "p1").exit_code == 0


def test_a_wait_that_times_out_exits_124_and_says_where_it_is(
    running: Run, fake: FakeService
) -> None:
    fake.set_state("p1", "300-WAITING", waiting_reason="no free slot")
    result = running("process", "wait", "p1", "--state", "RUNNING", "--timeout", "0.05")
    assert result.exit_code == 124
    assert result.stderr.startswith("error: timed out: process p1 did not reach RUNNING")
    assert "it is 300-WAITING (no free slot)" in result.stderr


def test_kill_restart_and_dump(running: Run) -> None:
    assert running("process", "restart", "p1").stdout == "p1 500-RUNNING\n"
    assert running("process", "kill", "p1").stdout == "p1 700-TERMINATED\n"
    assert yaml.safe_load(running("process", "dump").stdout) == {"definitions": 1, "processes": 1}


def test_logs_print_stdout_or_stderr(running: Run, fake: FakeService) -> None:
    fake.logs["p1", "stdout"] = "out\n" * 3
    fake.logs["p1", "stderr"] = "err\n"
    assert running("process", "logs", "p1").stdout == "out\nout\nout\n"
    assert running("process", "logs", "p1", "--stderr").stdout == "err\n"


def test_logs_follow_until_the_process_ends_and_nothing_is_left(
    running: Run, fake: FakeService
) -> None:
    fake.logs["p1", "stdout"] = "first\n"

    def finish() -> None:
        fake.logs["p1", "stdout"] += "last\n"
        fake.set_state("p1", "800-EXITED")

    timer = threading.Timer(0.1, finish)
    timer.start()
    try:
        result = running("process", "logs", "p1", "-f", "--interval", "0.01")
    finally:
        timer.cancel()
    assert result.exit_code == 0
    assert result.stdout == "first\nlast\n"


def test_node_list_shows_slots_and_heartbeat_age(run: Run) -> None:
    result = run("node", "list")
    header, row = result.stdout.splitlines()[:2]
    assert header.split() == [
        "NODE_ID", "ENGINE", "TYPE", "PRICE", "STATE", "HEALTH", "HOSTNAME", "SLOTS", "IDLE",
        "HEARD",
    ]  # fmt: skip
    assert row.split() == [
        "node-1", "default", "small", "0.02", "busy", "ok", "alpha", "1/4", "run", "0.5s", "ago",
    ]  # fmt: skip
    assert json.loads(run("node", "list", "--json").stdout)[0]["slots"] == 4


def test_engine_list(run: Run) -> None:
    result: Any = run("engine", "list")
    assert result.stdout.split()[:3] == ["ENGINE_ID", "DRIVER", "SLOTS"]


def test_a_bad_option_with_the_exec_shortcut_creates_nothing(run: Run, fake: FakeService) -> None:
    result = run("process", "schedule", "job", "--exec", "/bin/true", "--constraint", "novalue")
    assert result.exit_code == 2
    assert "job" not in fake.definitions
