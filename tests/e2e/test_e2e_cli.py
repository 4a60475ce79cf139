"""The ``corral`` CLI against a real dispatcher, as a user drives it from the shell.

Every command runs as ``python -m corral ...`` with only ``CORRAL_HOME`` set; outputs and
exit codes are checked as a script would check them.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.timeout(60)


def _ok(run: Any) -> Any:
    assert run.code == 0, str(run)
    assert "Traceback" not in run.out + run.err, str(run)
    return run


def _one_error_line(run: Any, code: int = 1) -> str:
    """The run failed with ``code`` and said why in exactly one ``error: ...`` line."""
    assert run.code == code, str(run)
    assert "Traceback" not in run.out + run.err, str(run)
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, str(run)
    assert lines[0].startswith("error: "), str(run)
    return lines[0]


def test_definition_create_describe_list_update_remove(cli: Any) -> None:
    created = _ok(
        cli(
            "definition create greet --exec /bin/echo --arg hello --env GREETING=1 --name Greeter"
            " --json"
        )
    ).json()
    assert created["definition_id"] == "greet"
    assert created["executable"]["exec"] == "/bin/echo"
    assert created["executable"]["argv"] == ["hello"]
    assert created["executable"]["env"] == {"GREETING": "1"}
    assert created["name"] == "Greeter"

    assert _ok(cli("definition describe greet --json")).json() == created
    described = yaml.safe_load(_ok(cli("definition describe greet --yaml")).out)
    assert described == created
    listed = _ok(cli("definition list --json")).json()
    assert created in listed
    table = _ok(cli("definition list")).out
    assert "DEFINITION" in table
    assert any(line.split()[:1] == ["greet"] for line in table.splitlines())

    updated = _ok(cli("definition update greet --exec /bin/echo --arg bonjour --json")).json()
    assert updated["executable"]["argv"] == ["bonjour"]
    after = _ok(cli("definition describe greet --json")).json()
    assert after["executable"]["argv"] == ["bonjour"]
    assert after["name"] is None  # update replaces the definition

    removed = _ok(cli("definition remove greet"))
    assert "greet" in removed.out
    remaining = _ok(cli("definition list --json")).json()
    assert "greet" not in [d["definition_id"] for d in remaining]
    assert "greet" in _one_error_line(cli("definition describe greet"))


def test_definition_create_from_a_file(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "filed.yaml"
    path.write_text(
        "definition_id: filed\n"
        "definition_type: exec\n"
        "executable:\n  exec: /bin/echo\n  argv: [from, a, file]\n"
        "description: made from a file\n"
    )
    created = _ok(cli(f"definition create --file {path} --json")).json()
    assert created["definition_type"] == "exec"
    assert created["executable"]["argv"] == ["from", "a", "file"]
    assert created["description"] == "made from a file"


def test_definition_sync_from_yaml_files(cli: Any, tmp_path: Path) -> None:
    folder = tmp_path / "definitions"
    folder.mkdir()
    one = folder / "one.yaml"
    one.write_text("definition_id: sync-one\nexecutable:\n  exec: /bin/echo\n  argv: [one]\n")
    (folder / "more.yml").write_text(
        "- definition_id: sync-two\n  executable: {exec: /bin/echo, argv: [two]}\n"
        "- definition_id: sync-three\n  definition_type: exec\n"
        "  executable: {exec: /bin/sh, argv: [-c, 'echo three'], env: {A: b}}\n"
    )
    (folder / "notes.txt").write_text("not a definition file; sync ignores it\n")

    def actions(run: Any) -> dict[str, str]:
        return {row["definition_id"]: row["action"] for row in _ok(run).json()}

    assert actions(cli(f"definition sync {folder} --json")) == {
        "sync-one": "created",
        "sync-two": "created",
        "sync-three": "created",
    }
    assert set(actions(cli(f"definition sync {folder} --json")).values()) == {"unchanged"}
    one.write_text("definition_id: sync-one\nexecutable:\n  exec: /bin/echo\n  argv: [uno]\n")
    assert actions(cli(f"definition sync {folder} --json")) == {
        "sync-one": "updated",
        "sync-two": "unchanged",
        "sync-three": "unchanged",
    }
    described = _ok(cli("definition describe sync-one --json")).json()
    assert described["executable"]["argv"] == ["uno"]
    three = _ok(cli("definition describe sync-three --json")).json()
    assert three["executable"] == {
        "exec": "/bin/sh",
        "argv": ["-c", "echo three"],
        "env": {"A": "b"},
        "working_directory": None,
    }
    # a synced definition runs
    ran = _ok(
        cli(
            "process schedule sync-three-1 sync-three --restart-mode NEVER --wait 800-EXITED --json"
        )
    ).json()
    assert ran["state"] == "800-EXITED"
    assert _ok(cli("process logs sync-three-1")).out == "three\n"

    bad = tmp_path / "bad.yaml"
    bad.write_text("definition_id: sync-bad\nexecutable: {exec: /bin/true}\nbogus: 1\n")
    assert "bogus" in _one_error_line(cli(f"definition sync {bad}"))
    unrunnable = tmp_path / "unrunnable.yaml"
    unrunnable.write_text("definition_id: sync-unrunnable\nexecutable: {exec: /etc/passwd}\n")
    run = cli(f"definition sync {unrunnable} --json")
    assert run.code == 1, str(run)
    assert "Traceback" not in run.err
    (row,) = run.json()
    assert row["action"] == "failed"
    assert "executable.exec" in row["detail"]


def test_schedule_wait_describe_list_and_logs(cli: Any) -> None:
    done = _ok(
        cli(
            "process schedule hello-e2e --exec /bin/echo --arg 'hello from e2e'"
            " --restart-mode NEVER --wait 800-EXITED --json"
        )
    ).json()
    assert done["upid"] == "hello-e2e"
    assert done["state"] == "800-EXITED"
    assert done["exit_code"] == 0
    assert done["restart_mode"] == "NEVER"

    assert _ok(cli("process logs hello-e2e")).out == "hello from e2e\n"
    assert _ok(cli("process logs hello-e2e --stderr")).out == ""
    described = yaml.safe_load(_ok(cli("process describe hello-e2e --yaml")).out)
    assert described["upid"] == "hello-e2e"
    assert described["state"] == "800-EXITED"
    assert described["starts"] == 1
    assert described["round"] == done["round"]
    table = _ok(cli("process describe hello-e2e")).out
    assert "800-EXITED" in table

    listed = _ok(cli("process list --json")).json()
    assert "hello-e2e" in [p["upid"] for p in listed]
    rows = [line.split() for line in _ok(cli("process list")).out.splitlines()]
    assert rows[0][:2] == ["UPID", "STATE"]
    assert ["hello-e2e", "800-EXITED"] in [row[:2] for row in rows]

    waited = _ok(cli("process wait hello-e2e"))
    assert waited.out.strip() == "800-EXITED"
    # the same call again under one request id: it ran and ended once, and stays so
    for _ in range(2):
        resent = _ok(
            cli("process schedule hello-e2e --request-id once-e2e --wait 800-EXITED --json")
        ).json()
    assert (resent["round"], resent["starts"]) == (done["round"] + 1, 2)
    dumped = yaml.safe_load(_ok(cli("process dump")).out)
    assert isinstance(dumped, dict)


def test_wait_exit_codes(cli: Any) -> None:
    _ok(
        cli(
            "process schedule fails-e2e --exec /bin/sh --arg -c --arg 'exit 3' --restart-mode NEVER"
        )
    )
    failed = cli("process wait fails-e2e --timeout 20")
    line = _one_error_line(failed, code=1)
    assert "850-FAILED" in line
    assert "status 3" in line
    assert failed.out.strip() == "850-FAILED"
    record = _ok(cli("process describe fails-e2e --json")).json()
    assert record["exit_code"] == 3

    # no node has zone=nowhere and it may not queue: REJECTED, and wait says so with 1
    rejected = cli(
        "process schedule rejected-e2e --exec /bin/true --constraint zone=nowhere"
        " --queueing-mode NEVER --wait 900-REJECTED"
    )
    assert "900-REJECTED" in _one_error_line(rejected, code=1)
    assert "900-REJECTED" in _one_error_line(cli("process wait rejected-e2e"), code=1)

    _ok(
        cli(
            "process schedule sleeps-e2e --exec /bin/sleep --arg 600 --restart-mode NEVER"
            " --wait 500-RUNNING"
        )
    )
    started = time.monotonic()
    timed_out = cli("process wait sleeps-e2e --timeout 0.5")
    assert time.monotonic() - started < 10
    line = _one_error_line(timed_out, code=124)
    assert "timed out" in line
    assert "500-RUNNING" in line
    running = _ok(cli("process wait sleeps-e2e --state 500-RUNNING"))
    assert running.out.strip() == "500-RUNNING"
    _ok(cli("process kill sleeps-e2e"))
    terminated = _ok(cli("process wait sleeps-e2e --timeout 20"))
    assert terminated.out.strip() == "700-TERMINATED"


def test_logs_follow_until_the_process_ends(cli: Any) -> None:
    script = 'for i in 1 2 3 4 5; do echo "line $i"; echo "err $i" >&2; sleep 0.2; done'
    _ok(
        cli(
            f"process schedule chatty-e2e --exec /bin/sh --arg -c --arg {shlex.quote(script)}"
            " --restart-mode NEVER --wait 500-RUNNING"
        )
    )
    started = time.monotonic()
    followed = _ok(cli("process logs chatty-e2e -f --interval 0.1"))
    took = time.monotonic() - started
    assert followed.out == "".join(f"line {i}\n" for i in range(1, 6))
    assert took < 15, took
    # it followed: the process had not ended when the command began
    assert took > 0.3, took
    state = _ok(cli("process describe chatty-e2e --json")).json()["state"]
    assert state == "800-EXITED"
    errors = _ok(cli("process logs chatty-e2e --stderr -f"))
    assert errors.out == "".join(f"err {i}\n" for i in range(1, 6))


def _describe(cli: Any, upid: str) -> dict[str, Any]:
    record: dict[str, Any] = _ok(cli(f"process describe {upid} --json")).json()
    return record


def test_kill_and_restart(cli: Any, served: Any) -> None:
    first = _ok(
        cli(
            "process schedule svc-e2e --exec /bin/sleep --arg 600 --restart-mode ALWAYS"
            " --wait 500-RUNNING --json"
        )
    ).json()
    assert first["state"] == "500-RUNNING"
    assert served.pid_alive(first["pid"])

    # a definition in use is not removed
    assert "svc-e2e" in _one_error_line(cli("definition remove svc-e2e"))

    restarted = _ok(cli("process restart svc-e2e --json")).json()
    assert restarted["upid"] == "svc-e2e"
    again = served.wait_until(
        lambda: (
            (r := _describe(cli, "svc-e2e"))["state"] == "500-RUNNING"
            and r["round"] > first["round"]
            and r
        ),
        "svc-e2e to run again in a new round",
    )
    assert again["pid"] != first["pid"]
    assert not served.pid_alive(first["pid"]), "the old round still runs"
    assert served.pid_alive(again["pid"])

    killed = cli("process kill svc-e2e")
    assert killed.code == 0, str(killed)
    assert killed.out.startswith("svc-e2e ")
    ended = _ok(cli("process wait svc-e2e --timeout 20 --json")).json()
    assert ended["state"] == "700-TERMINATED"
    assert not served.pid_alive(again["pid"])
    # ALWAYS does not bring back a process that was killed on purpose
    time.sleep(0.5)
    assert _describe(cli, "svc-e2e")["state"] == "700-TERMINATED"


def test_history_and_audit(cli: Any) -> None:
    _ok(cli("process schedule hist-e2e --exec /bin/true --restart-mode NEVER"))
    _ok(cli("process wait hist-e2e --timeout 20"))
    history = _ok(cli("process history hist-e2e --json")).json()
    assert history["upid"] == "hist-e2e"
    states = [step["state"] for step in history["steps"]]
    assert states[0] == "200-REQUESTED"
    assert states[-2:] == ["500-RUNNING", "800-EXITED"]
    assert all(step["round"] == 1 for step in history["steps"])
    table = _ok(cli("process history hist-e2e")).out
    assert "800-EXITED" in table
    assert "exited with status 0" in table  # the detail of the last step

    # the definition and the schedule were both noted, newest first, by the API token
    page = _ok(cli("audit --target hist-e2e --json")).json()
    actions = [entry["action"] for entry in page["entries"]]
    assert actions == ["schedule_process", "create_definition"]
    assert all(entry["actor"].startswith("api token") for entry in page["entries"])
    one = _ok(cli("audit --limit 1 --json")).json()
    assert len(one["entries"]) == 1
    older = _ok(cli(f"audit --limit 1 --before {one['next_before']} --json")).json()
    assert older["entries"][0]["id"] < one["entries"][0]["id"]
    assert "schedule_process" in _ok(cli("audit --target hist-e2e")).out

    assert "no-such" in _one_error_line(cli("process history no-such"))
    assert _ok(cli("audit --target no-such --json")).json()["entries"] == []


def test_node_and_engine_list(cli: Any) -> None:
    nodes = _ok(cli("node list --json")).json()
    assert len(nodes) == 1
    (node,) = nodes
    assert node["connected"] is True
    assert node["health"] == "ok"
    assert node["engine"] == "default"
    assert node["slots"] == 4
    table = _ok(cli("node list")).out
    assert node["node_id"] in table
    assert "HEALTH" in table
    engines = _ok(cli("engine list --json")).json()
    assert "default" in str(engines)


def test_node_hold_and_run(cli: Any) -> None:
    (node,) = _ok(cli("node list --json")).json()
    held = _ok(cli(f"node hold {node['node_id']} --json")).json()
    assert held[0]["idle_behavior"] == "hold"
    assert "hold" in _ok(cli("node list")).out
    back = _ok(cli(f"node run {node['node_id']} --json")).json()
    assert back[0]["idle_behavior"] == "run"
    line = _one_error_line(cli("node drain no-such-node"))
    assert "no-such-node" in line


@pytest.mark.parametrize(
    ("command", "named"),
    [
        ("process describe no-such", "no-such"),
        ("process wait no-such", "no-such"),
        ("process logs no-such", "no-such"),
        ("process kill no-such", "no-such"),
        ("process restart no-such", "no-such"),
        ("process schedule err-1 no-such-definition", "no-such-definition"),
        ("definition describe no-such", "no-such"),
        ("definition remove no-such", "no-such"),
        ("definition create err-2 --exec /etc/passwd", "executable"),
        ("definition create err-3 --exec /no/such/program", "executable"),
        ("process schedule err-4 --exec /bin/true --engine nope", "nope"),
        ("--token wrong process list", "token"),
        ("--url http://127.0.0.1:9 process list", "127.0.0.1:9"),
    ],
)
def test_an_error_is_one_line(cli: Any, command: str, named: str) -> None:
    assert named in _one_error_line(cli(command))


def test_usage_errors_exit_2_without_a_traceback(cli: Any) -> None:
    for command in (
        "process schedule err-5 --exec /bin/true --configuration '{nope'",
        "process schedule err-6 --exec /bin/true --restart-mode SOMETIMES",
        "process describe x --json --yaml",
        "no-such-command",
    ):
        run = cli(command)
        assert run.code == 2, str(run)
        assert "Traceback" not in run.out + run.err, str(run)
        assert "Error" in run.err, str(run)
