"""Process lifecycle through the client, with real OS processes: states, rounds, exit codes,
idempotent create/schedule, restart_process, configuration and logs (issue 2, Semantics)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.errors import Conflict

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def corral(start_corral) -> Iterator:
    with start_corral() as corral:
        yield corral


# -- states and rounds ----------------------------------------------------------------------


def test_create_process_makes_an_unscheduled_process_in_round_0_that_does_not_run(
    corral, tmp_path: Path
) -> None:
    starts = tmp_path / "starts"
    definition = corral.define(f'echo x >> "{starts}"')
    created = corral.client.create_process("created-only", definition, name="only created")
    assert created["state"] == "100-UNSCHEDULED"
    assert created["round"] == 0
    assert created["starts"] == 0
    assert created["name"] == "only created"
    time.sleep(0.3)  # proving a negative: nothing starts an unscheduled process
    assert corral.describe("created-only")["state"] == "100-UNSCHEDULED"
    assert not starts.exists()


def test_a_scheduled_process_runs_and_exit_0_makes_it_exited_with_exit_code_0(
    corral, gate: Path
) -> None:
    upid = corral.run(corral.WAIT_FOR_GATE + "; exit 0", env={"GATE": gate})
    running = corral.wait_state(upid, "500-RUNNING")
    assert running["round"] == 1
    assert running["starts"] == 1
    assert running["pid"]
    assert corral.pid_alive(running["pid"])
    assert running["assigned"] == corral.ready_nodes()[0]["node_id"]
    assert running["engine"] == "default"
    assert running["hostname"]
    gate.touch()
    ended = corral.wait_end(upid)
    assert ended["state"] == "800-EXITED"
    assert (ended["exit_code"], ended["signal"]) == (0, None)
    assert ended["round"] == 1
    assert ended["starts"] == 1
    corral.wait_until(lambda: not corral.pid_alive(running["pid"]), "the exited pid to be gone")


def test_a_non_zero_exit_makes_the_process_failed_with_its_exit_code(corral) -> None:
    upid = corral.run("exit 3", restart_mode="NEVER")
    ended = corral.wait_end(upid)
    assert ended["state"] == "850-FAILED"
    assert (ended["exit_code"], ended["signal"]) == (3, None)
    assert "3" in ended["end_reason"]


def test_a_process_killed_by_a_signal_is_failed_and_keeps_the_signal(corral) -> None:
    upid = corral.run("kill -KILL $$", restart_mode="NEVER")
    ended = corral.wait_end(upid)
    assert ended["state"] == "850-FAILED"
    assert ended["signal"] == signal.SIGKILL
    assert ended["exit_code"] is None
    assert "signal" in ended["end_reason"]


def test_a_missing_working_directory_makes_the_process_failed_with_the_reason(
    corral, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-dir"
    definition = corral.define("exit 0", working_directory=str(missing))
    corral.client.schedule_process("bad-cwd", definition, restart_mode="NEVER")
    ended = corral.wait_end("bad-cwd")
    assert ended["state"] == "850-FAILED"
    assert (ended["starts"], ended["pid"]) == (0, None)
    assert "failed to start" in ended["end_reason"]
    assert str(missing) in ended["end_reason"]


def test_an_executable_that_vanished_after_its_definition_fails_to_start_with_the_reason(
    corral, tmp_path: Path
) -> None:
    program = tmp_path / "program"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    corral.client.create_definition("vanishing", "exec", {"exec": str(program), "argv": []})
    program.unlink()
    corral.client.schedule_process("vanished", "vanishing", restart_mode="NEVER")
    ended = corral.wait_end("vanished")
    assert ended["state"] == "850-FAILED"
    assert "failed to start" in ended["end_reason"]
    assert str(program) in ended["end_reason"]


def test_scheduling_a_finished_process_again_runs_it_in_a_new_round(corral, tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    definition = corral.define(f'echo "$CORRAL_ROUND" >> "{starts}"')
    first = corral.client.schedule_process("again", definition)
    assert first["round"] == 1
    assert corral.wait_end("again")["state"] == "800-EXITED"

    second = corral.client.schedule_process("again", definition)
    assert second["round"] == 2
    assert second["state"] in ("200-REQUESTED", "350-ASSIGNED", "400-PENDING", "500-RUNNING")
    ended = corral.wait_state("again", "800-EXITED", round_=2)
    assert ended["starts"] == 2
    assert corral.lines(starts) == ["1", "2"]


def test_scheduling_a_failed_process_again_with_no_parameters_runs_it_in_a_new_round(
    corral,
) -> None:
    upid = corral.run("exit 4", restart_mode="NEVER")
    assert corral.wait_end(upid)["state"] == "850-FAILED"
    again = corral.client.schedule_process(upid)
    assert again["round"] == 2
    ended = corral.wait_state(upid, "850-FAILED", round_=2)
    assert ended["starts"] == 2
    assert ended["exit_code"] == 4


def test_the_round_and_state_of_a_process_only_move_forward_in_its_events(corral) -> None:
    upid = corral.unique("forward")
    recorder = corral.events(upid)
    try:
        corral.client.create_process(upid, corral.define("exit 1"))
        corral.client.schedule_process(
            upid, configuration={"corral": {"restart": {"max_attempts": 2, "backoff_initial": 0}}}
        )
        assert corral.wait_state(upid, "850-FAILED", round_=3)["starts"] == 3
        corral.wait_until(
            lambda: recorder.states(upid)[-1:] == ["850-FAILED"], "the last event to arrive"
        )
    finally:
        recorder.close()
    pairs = [(e["round"], int(e["state"].split("-")[0])) for e in recorder.of(upid)]
    assert pairs == sorted(pairs), pairs
    assert pairs[0] == (0, 100)
    assert pairs[-1] == (3, 850)
    assert {r for r, _ in pairs} == {0, 1, 2, 3}


# -- idempotency ----------------------------------------------------------------------------


def test_scheduling_the_same_process_twice_returns_it_and_starts_it_once(
    corral, tmp_path: Path, gate: Path
) -> None:
    starts = tmp_path / "starts"
    script = f'echo $$ >> "{starts}"; ' + corral.WAIT_FOR_GATE
    definition = corral.define(script, env={"GATE": str(gate)})
    params = {
        "definition_id": definition,
        "configuration": {"k": [1, 2]},
        "constraints": {"engine": "default"},
        "restart_mode": "ALWAYS",
        "queueing_mode": "ALWAYS",
        "name": "twice",
    }
    first = corral.client.schedule_process("twice", **params)
    second = corral.client.schedule_process("twice", **params)
    assert second["upid"] == first["upid"]
    assert second["round"] == first["round"] == 1
    running = corral.wait_state("twice", "500-RUNNING")
    third = corral.client.schedule_process("twice", **params)
    assert (third["round"], third["state"], third["pid"]) == (1, "500-RUNNING", running["pid"])
    time.sleep(0.3)  # proving a negative: no second start
    assert corral.lines(starts) == [str(running["pid"])]
    assert corral.describe("twice")["starts"] == 1
    corral.client.terminate_process("twice")
    corral.client.wait_process("twice", ["TERMINATED"])


def test_creating_the_same_process_twice_returns_it(corral) -> None:
    definition = corral.define("exit 0")
    first = corral.client.create_process("create-twice", definition, name="n")
    second = corral.client.create_process("create-twice", definition, name="n")
    assert first == second


def test_the_same_upid_with_other_parameters_is_a_conflict_naming_them(corral, gate: Path) -> None:
    upid = corral.run(corral.WAIT_FOR_GATE, env={"GATE": gate}, restart_mode="NEVER")
    definition = corral.describe(upid)["definition_id"]
    with pytest.raises(Conflict) as caught:
        corral.client.schedule_process(upid, definition, restart_mode="ALWAYS")
    assert "restart_mode" in caught.value.message
    assert upid in caught.value.message
    other = corral.define("exit 0")
    with pytest.raises(Conflict) as caught:
        corral.client.schedule_process(upid, other)
    assert "definition_id" in caught.value.message
    with pytest.raises(Conflict) as caught:
        corral.client.create_process(upid, other)
    assert upid in caught.value.message
    assert corral.describe(upid)["restart_mode"] == "NEVER"
    gate.touch()
    assert corral.wait_end(upid)["state"] == "800-EXITED"


def test_a_created_process_can_be_scheduled_with_more_parameters(corral, tmp_path: Path) -> None:
    out = tmp_path / "configuration"
    definition = corral.define(f'printf %s "$CORRAL_CONFIGURATION" > "{out}"; exit 5')
    corral.client.create_process("create-then-schedule", definition, name="cts")
    scheduled = corral.client.schedule_process(
        "create-then-schedule",
        configuration={"answer": 42},
        restart_mode="NEVER",
        constraints={"engine": "default"},
    )
    assert scheduled["round"] == 1
    assert scheduled["name"] == "cts"
    assert scheduled["restart_mode"] == "NEVER"
    assert scheduled["configuration"] == {"answer": 42}
    ended = corral.wait_end("create-then-schedule")
    assert (ended["state"], ended["exit_code"], ended["starts"]) == ("850-FAILED", 5, 1)
    assert json.loads(out.read_text()) == {"answer": 42}


# -- restart_process ------------------------------------------------------------------------


def test_restart_process_kills_a_running_process_and_runs_it_again_in_a_new_round(
    corral, tmp_path: Path
) -> None:
    starts = tmp_path / "starts"
    upid = corral.run(f'echo $$ >> "{starts}"; while :; do sleep 0.1; done', restart_mode="NEVER")
    first = corral.wait_state(upid, "500-RUNNING")
    restarted = corral.client.restart_process(upid)
    assert restarted["round"] == 2
    second = corral.wait_state(upid, "500-RUNNING", round_=2)
    assert second["pid"] != first["pid"]
    assert second["starts"] == 2
    corral.wait_until(lambda: not corral.pid_alive(first["pid"]), "the first round's pid to go")
    assert corral.pid_alive(second["pid"])
    time.sleep(0.3)  # proving a negative: the old round's end starts nothing more
    now = corral.describe(upid)
    assert (now["round"], now["state"], now["starts"]) == (2, "500-RUNNING", 2)
    assert corral.lines(starts) == [str(first["pid"]), str(second["pid"])]
    corral.client.terminate_process(upid)
    assert corral.client.wait_process(upid, ["TERMINATED"])["state"] == "700-TERMINATED"


def test_restart_process_runs_a_finished_process_again_in_a_new_round(corral) -> None:
    upid = corral.run("exit 0")
    assert corral.wait_end(upid)["state"] == "800-EXITED"
    assert corral.client.restart_process(upid)["round"] == 2
    ended = corral.wait_state(upid, "800-EXITED", round_=2)
    assert ended["starts"] == 2


# -- configuration and logs -----------------------------------------------------------------


def test_the_configuration_reaches_the_process_in_its_environment_and_in_a_file(corral) -> None:
    configuration = {"name": "x y", "n": [1, 2.5], "nested": {"ok": True, "none": None}}
    upid = corral.run(
        'printf "%s\\n" "$CORRAL_CONFIGURATION"; cat "$CORRAL_CONFIGURATION_FILE"',
        configuration=configuration,
    )
    assert corral.wait_end(upid)["state"] == "800-EXITED"
    from_env, from_file = corral.client.read_log(upid)["data"].splitlines()
    assert json.loads(from_env) == configuration
    assert json.loads(from_file) == configuration


def test_stdout_and_stderr_are_kept_apart_and_read_with_offsets(corral) -> None:
    upid = corral.run("printf 'out1\\n'; printf 'err1\\n' >&2; printf 'out2\\n'")
    assert corral.wait_end(upid)["state"] == "800-EXITED"
    out = corral.client.read_log(upid, "stdout")
    assert (out["data"], out["next_offset"], out["size"]) == ("out1\nout2\n", 10, 10)
    err = corral.client.read_log(upid, "stderr")
    assert (err["data"], err["next_offset"], err["size"]) == ("err1\n", 5, 5)
    tail = corral.client.read_log(upid, "stdout", offset=5)
    assert (tail["data"], tail["next_offset"]) == ("out2\n", 10)
    head = corral.client.read_log(upid, "stdout", offset=0, limit=3)
    assert (head["data"], head["next_offset"]) == ("out", 3)
    rest = corral.client.read_log(upid, "stdout", offset=head["next_offset"])
    assert rest["data"] == "1\nout2\n"
    beyond = corral.client.read_log(upid, "stdout", offset=100)
    assert beyond["data"] == ""


def test_the_log_of_a_running_process_grows_as_it_writes(corral, gate: Path) -> None:
    upid = corral.run("echo first; " + corral.WAIT_FOR_GATE + "; echo second", env={"GATE": gate})
    corral.wait_until(
        lambda: corral.client.read_log(upid)["data"] == "first\n", "the first line in the log"
    )
    offset = corral.client.read_log(upid)["next_offset"]
    gate.touch()
    assert corral.wait_end(upid)["state"] == "800-EXITED"
    assert corral.client.read_log(upid, offset=offset)["data"] == "second\n"


def test_the_log_of_a_process_that_never_started_is_empty(corral) -> None:
    corral.client.create_process("never-started", corral.define("exit 0"))
    chunk = corral.client.read_log("never-started", "stderr")
    assert chunk["data"] == ""


def test_the_process_sees_its_upid_and_round(corral) -> None:
    upid = corral.run('echo "$CORRAL_UPID $CORRAL_ROUND"')
    corral.wait_end(upid)
    assert corral.client.read_log(upid)["data"] == f"{upid} 1\n"
