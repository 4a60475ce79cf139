"""Operator-facing behaviour beyond the EPU calls: batch scheduling, one dispatcher per home,
and nodes whose agent an operator started by hand."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.config import default_config
from corral.dispatcher.runtime import Runtime, RuntimeSettings
from corral.errors import Conflict, InvalidRequest
from corral.testing.dispatcher import open_test_dispatcher
from corral.testing.serve import pid_alive, wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def corral(start_corral) -> Iterator:
    with start_corral() as corral:
        yield corral


def test_a_batch_is_scheduled_in_one_request_and_every_process_runs(corral) -> None:
    definition = corral.define("exit 0")
    items = [
        {"upid": f"batch-{i}", "definition_id": definition, "restart_mode": "NEVER"}
        for i in range(20)
    ]
    scheduled = corral.client.schedule_processes(items)
    assert [p["upid"] for p in scheduled] == [f"batch-{i}" for i in range(20)]
    assert {p["round"] for p in scheduled} == {1}
    for i in range(20):
        assert corral.wait_end(f"batch-{i}")["state"] == "800-EXITED"


def test_a_batch_with_one_bad_item_schedules_nothing_and_names_the_item(corral) -> None:
    definition = corral.define("exit 0")
    items = [
        {"upid": "all-or-none-0", "definition_id": definition},
        {"upid": "all-or-none-1", "definition_id": definition, "execution_engine_id": "nope"},
    ]
    with pytest.raises(InvalidRequest) as refused:
        corral.client.schedule_processes(items)
    assert refused.value.field == "processes[1].execution_engine_id"
    assert "processes[1]" in refused.value.message
    upids = {p["upid"] for p in corral.client.describe_processes()}
    assert "all-or-none-0" not in upids


def test_a_call_sent_again_with_its_request_id_runs_nothing_twice(corral) -> None:
    # A client whose answer was lost sends its call again: by then the process may have run
    # and ended. Without a request id that would run it again (the EPU's "schedule an ended
    # process"); with the same request id it is the same call.
    definition = corral.define("exit 0")
    first = corral.client.schedule_process(
        "retried", definition, restart_mode="NEVER", request_id="call-1"
    )
    assert first["request_id"] == "call-1"
    assert corral.wait_end("retried")["state"] == "800-EXITED"
    again = corral.client.schedule_process(
        "retried", definition, restart_mode="NEVER", request_id="call-1"
    )
    assert (again["round"], again["state"], again["starts"]) == (1, "800-EXITED", 1)

    rerun = corral.client.schedule_process("retried", request_id="call-2")  # a new call
    assert rerun["round"] == 2
    assert corral.wait_end("retried")["starts"] == 2
    assert corral.client.schedule_process("retried")["round"] == 3  # no id: runs again


def test_a_batch_sent_again_with_its_request_id_runs_nothing_twice(corral) -> None:
    definition = corral.define("exit 0")
    items = [
        {"upid": f"resent-{i}", "definition_id": definition, "restart_mode": "NEVER"}
        for i in range(5)
    ]
    corral.client.schedule_processes(items, request_id="batch-1")
    for i in range(5):
        corral.wait_end(f"resent-{i}")
    again = corral.client.schedule_processes(items, request_id="batch-1")
    assert {(p["round"], p["starts"]) for p in again} == {(1, 1)}
    assert {p["round"] for p in corral.client.schedule_processes(items, request_id="b2")} == {2}


def test_a_batch_naming_one_upid_twice_is_refused(corral) -> None:
    definition = corral.define("exit 0")
    item = {"upid": "twice-in-batch", "definition_id": definition}
    with pytest.raises(InvalidRequest) as refused:
        corral.client.schedule_processes([item, item])
    assert refused.value.field == "processes[1].upid"


def test_a_second_dispatcher_on_the_same_home_is_refused(tmp_path: Path) -> None:
    with open_test_dispatcher(home=tmp_path / "home") as first:
        second = Runtime(RuntimeSettings(first.home, default_config(), "unused"))

        async def start_second() -> None:
            try:
                await second.start()
            finally:
                await second.aclose()

        with pytest.raises(Conflict) as refused:
            asyncio.run(start_second())
        assert "another dispatcher" in refused.value.message
        # the first one still serves
        assert first.client.health()["status"] == "ok"


HAND_STARTED = """
[[engines]]
id = "default"
allow_root = true  # the tests may run as root
slots = 2
base_need = 0
maximum_vms = 1
heartbeat_period = 0.2
heartbeat_warning = 1.0
heartbeat_missing = 2.0
"""


def test_an_agent_started_by_hand_joins_stays_and_runs_work(tmp_path: Path) -> None:
    with open_test_dispatcher(HAND_STARTED) as corral:
        address = (corral.home / "agent_address").read_text().strip()
        # the node's own token, as the operator gets it where the dispatcher runs
        printed = subprocess.run(
            [sys.executable, "-m", "corral", "node", "token", "by-hand"],
            env={**os.environ, "CORRAL_HOME": str(corral.home)},
            capture_output=True,
            text=True,
            check=True,
        )
        token_file = tmp_path / "by-hand.token"
        token_file.write_text(printed.stdout)
        token_file.chmod(0o600)
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "corral.agent",
                "--dispatcher",
                address,
                "--token-file",
                str(token_file),
                "--node-id",
                "by-hand",
                "--engine",
                "default",
                "--slots",
                "2",
                "--state-dir",
                str(tmp_path / "agent"),
                "--heartbeat-period",
                "0.2",
                "--allow-root",  # the tests may run as root
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(
                lambda: any(
                    n["node_id"] == "by-hand" and n["connected"] for n in corral.client.list_nodes()
                ),
                "the hand-started agent to join",
            )
            # No driver knows this node: it must not be taken for a vanished instance.
            time.sleep(1.5)
            nodes = corral.client.list_nodes()
            assert [n["node_id"] for n in nodes] == ["by-hand"]
            assert pid_alive(agent.pid)
            corral.client.create_definition("hi", "exec", {"exec": "/bin/true"})
            corral.client.schedule_process("on-hand-node", "hi", restart_mode="NEVER")
            done = corral.client.wait_process("on-hand-node", timeout=20)
            assert (done["state"], done["assigned"]) == ("800-EXITED", "by-hand")
        finally:
            agent.terminate()
            agent.wait(10)
