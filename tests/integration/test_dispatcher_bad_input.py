"""Bad input gets a 4xx whose message names the problem, never a 500, and the dispatcher
keeps working (issue 2). Most requests go through the ``Client``; bodies the client cannot
even express (unknown fields, wrong JSON types) go over plain HTTP with the same token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.errors import Conflict, InvalidRequest, NotFound

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def corral(start_corral) -> Iterator:
    with start_corral() as corral:
        yield corral


@pytest.fixture(scope="module")
def http(corral) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {corral.token}"}
    with httpx.Client(base_url=corral.url, headers=headers, timeout=10) as client:
        yield client


@pytest.fixture(autouse=True)
def still_serving(corral) -> Iterator[None]:
    yield
    # after any bad input, the dispatcher still runs processes
    upid = corral.run("exit 0")
    assert corral.wait_end(upid, timeout=10)["state"] == "800-EXITED"


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    return response.json()["error"]


# -- definitions and executables ------------------------------------------------------------


def test_scheduling_with_an_unknown_definition_is_an_invalid_request_naming_definition_id(
    corral,
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        corral.client.schedule_process("no-def", "no-such-definition")
    assert caught.value.field == "definition_id"
    assert "no-such-definition" in caught.value.message
    with pytest.raises(NotFound):
        corral.client.describe_process("no-def")


def test_creating_a_process_of_an_unknown_definition_is_an_invalid_request(corral) -> None:
    with pytest.raises(InvalidRequest) as caught:
        corral.client.create_process("no-def-2", "no-such-definition")
    assert caught.value.field == "definition_id"


def test_scheduling_an_unknown_process_without_a_definition_is_an_invalid_request(
    corral,
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        corral.client.schedule_process("nobody-made-me")
    assert caught.value.field == "definition_id"


def test_an_exec_path_that_is_not_executable_is_an_invalid_request_naming_executable_exec(
    corral, tmp_path: Path
) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    with pytest.raises(InvalidRequest) as caught:
        corral.client.create_definition("not-executable", "exec", {"exec": str(script)})
    assert caught.value.field == "executable.exec"
    assert str(script) in caught.value.message
    assert "executable" in caught.value.message


@pytest.mark.parametrize(
    "path", ["/no/such/program", "no-such-program-on-path", "/tmp", ""], ids=repr
)
def test_an_exec_path_that_cannot_run_is_an_invalid_request_naming_executable_exec(
    corral, path: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        corral.client.create_definition(corral.unique("bad-exec"), "exec", {"exec": path})
    assert caught.value.field == "executable.exec"


def test_an_empty_argv_runs_the_program_with_no_arguments(corral) -> None:
    corral.client.create_definition("no-args", "exec", {"exec": "/bin/true", "argv": []})
    corral.client.schedule_process("no-args-1", "no-args")
    assert corral.wait_end("no-args-1")["state"] == "800-EXITED"


def test_an_omitted_argv_is_an_empty_one(corral) -> None:
    made = corral.client.create_definition("argv-omitted", "exec", {"exec": "/bin/true"})
    assert made["executable"]["argv"] == []


def test_a_null_argv_is_an_invalid_request_naming_it(corral) -> None:
    with pytest.raises(InvalidRequest) as caught:
        corral.client.create_definition("null-argv", "exec", {"exec": "/bin/true", "argv": None})
    assert caught.value.field == "executable.argv"


def test_an_argv_that_is_not_a_list_of_strings_is_an_invalid_request_naming_it(corral) -> None:
    with pytest.raises(InvalidRequest) as caught:
        corral.client.create_definition("bad-argv", "exec", {"exec": "/bin/echo", "argv": [1]})
    assert (caught.value.field or "").startswith("executable.argv")


def test_an_unknown_field_of_an_executable_is_an_invalid_request_naming_it(corral) -> None:
    with pytest.raises(InvalidRequest) as caught:
        corral.client.create_definition(
            "extra-field", "exec", {"exec": "/bin/true", "args": ["-x"]}
        )
    assert caught.value.field == "executable.args"


def test_an_unknown_definition_type_is_an_invalid_request_naming_it(corral) -> None:
    with pytest.raises(InvalidRequest) as caught:
        corral.client.create_definition("docker", "docker", {"exec": "/bin/true"})
    assert caught.value.field == "definition_type"


def test_a_relative_working_directory_is_an_invalid_request_naming_it(corral) -> None:
    with pytest.raises(InvalidRequest) as caught:
        corral.client.create_definition(
            "relative-cwd", "exec", {"exec": "/bin/true", "working_directory": "tmp"}
        )
    assert caught.value.field == "executable.working_directory"


# -- schedule_process -----------------------------------------------------------------------


def test_an_unknown_field_in_schedule_process_is_an_invalid_request_naming_it(
    corral, http: httpx.Client
) -> None:
    definition = corral.define("exit 0")
    response = http.post(
        "/processes/extra/schedule", json={"definition_id": definition, "colour": "red"}
    )
    error = error_of(response)
    assert error["type"] == "InvalidRequest"
    assert error["field"] == "colour"
    assert "colour" in error["message"]


def test_the_same_upid_with_other_parameters_is_a_409_conflict(corral, http: httpx.Client) -> None:
    definition = corral.define("exit 0")
    upid = corral.unique("conflict")
    first = http.post(f"/processes/{upid}/schedule", json={"definition_id": definition})
    assert first.status_code == 200
    again = http.post(
        f"/processes/{upid}/schedule", json={"definition_id": definition, "restart_mode": "NEVER"}
    )
    assert again.status_code == 409
    error = again.json()["error"]
    assert error["type"] == "Conflict"
    assert "restart_mode" in error["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"configuration": "debug"}, "configuration"),
        ({"configuration": [1, 2]}, "configuration"),
        ({"subscribers": "http://x"}, "subscribers"),
        ({"constraints": {"zone": {"in": ["a"]}}}, "constraints.zone"),
        ({"queueing_mode": 3}, "queueing_mode"),
        ({"restart_mode": None, "name": 7}, "name"),
        ({"node_exclusive": ["a"]}, "node_exclusive"),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else None,
)
def test_a_wrongly_typed_schedule_field_is_an_invalid_request_naming_it(
    corral, http: httpx.Client, body: dict, field: str
) -> None:
    upid = corral.unique("wrong-type")
    response = http.post(
        f"/processes/{upid}/schedule", json={"definition_id": corral.define("exit 0"), **body}
    )
    error = error_of(response)
    assert error["type"] == "InvalidRequest"
    assert error["field"] == field
    with pytest.raises(NotFound):
        corral.client.describe_process(upid)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"queueing_mode": "SOMETIMES"}, "queueing_mode"),
        ({"restart_mode": "OFTEN"}, "restart_mode"),
        ({"execution_engine_id": "no-such-engine"}, "execution_engine_id"),
        ({"subscribers": ["ftp://example.org/"]}, "subscribers.0"),
        ({"constraints": {"zone": []}}, "constraints.zone"),
    ],
    ids=str,
)
def test_a_bad_schedule_value_is_an_invalid_request_naming_the_field(
    corral, params: dict, field: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        corral.client.schedule_process(corral.unique("bad"), corral.define("exit 0"), **params)
    given = (caught.value.field or "").replace("[", ".").replace("]", "")
    assert given == field, caught.value


@pytest.mark.parametrize("upid", [" ", "a" * 300, "x\x00y", ".."], ids=repr)
def test_a_malformed_upid_is_a_4xx_not_a_500(corral, http: httpx.Client, upid: str) -> None:
    response = http.post("/processes", json={"upid": upid, "definition_id": "nothing"})
    assert 400 <= response.status_code < 500, response.text


@pytest.mark.parametrize(
    "upid", ["forged\nINFO line", "bell\x07", "esc\x1b[2J", "c1\x85"], ids=repr
)
def test_an_id_with_control_characters_is_refused_naming_it(corral, upid: str) -> None:
    # a newline in an id would let a caller write lines of their own into the logs
    with pytest.raises(InvalidRequest) as caught:
        corral.client.schedule_process(upid, corral.define("exit 0"))
    assert caught.value.field == "upid"
    assert "control characters" in caught.value.message


@pytest.mark.parametrize("upid", ["é" * 50, "a b:c?d#e%f&g=h", "ü" * 100], ids=len)
def test_a_upid_the_dispatcher_accepts_is_one_its_agent_can_run(corral, upid: str) -> None:
    definition = corral.define("echo ran")
    try:
        corral.client.schedule_process(upid, definition, restart_mode="NEVER")
    except InvalidRequest as refused:  # refusing it up front is fine too
        field = refused.field
    else:
        field = None
    if field is not None:
        assert field == "upid"
        return
    ended = corral.wait_end(upid)
    assert (ended["state"], ended["end_reason"]) == ("800-EXITED", "exited with status 0")
    assert corral.client.read_log(upid)["data"] == "ran\n"


def test_a_body_that_is_not_json_is_an_invalid_request(corral, http: httpx.Client) -> None:
    response = http.post(
        "/processes/x/schedule",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert error_of(response)["type"] == "InvalidRequest"


# -- the rest of the API --------------------------------------------------------------------


def test_waiting_for_a_state_that_does_not_exist_is_an_invalid_request(corral) -> None:
    upid = corral.run("exit 0")
    with pytest.raises(InvalidRequest) as caught:
        corral.client.wait_process(upid, ["SLEEPING"], timeout=1)
    assert "SLEEPING" in caught.value.message


def test_an_unknown_process_is_not_found_naming_it(corral) -> None:
    for call in (
        corral.client.describe_process,
        corral.client.terminate_process,
        corral.client.restart_process,
    ):
        with pytest.raises(NotFound) as caught:
            call("ghost")
        assert "ghost" in caught.value.message


def test_restarting_a_process_that_was_never_scheduled_is_a_conflict(corral) -> None:
    corral.client.create_process("only-created", corral.define("exit 0"))
    with pytest.raises(Conflict) as caught:
        corral.client.restart_process("only-created")
    assert "schedule_process" in caught.value.message
    assert corral.describe("only-created")["state"] == "100-UNSCHEDULED"


def test_reading_a_log_with_a_negative_offset_is_an_invalid_request(
    corral, http: httpx.Client
) -> None:
    upid = corral.run("exit 0")
    corral.wait_end(upid)
    response = http.get(f"/processes/{upid}/logs", params={"offset": -1})
    assert error_of(response)["field"] == "offset"
    response = http.get(f"/processes/{upid}/logs", params={"stream": "stdin"})
    assert error_of(response)["field"] == "stream"
