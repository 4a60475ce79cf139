"""Where a process runs: constraints, engines, node_exclusive and packing (issue 2).

Two engines, each with one node: ``a`` (zone a, the default) and ``b`` (zone b). Packing
has its own engine of two nodes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.errors import InvalidRequest

pytestmark = pytest.mark.timeout(30)

_ENGINE = """
[[engines]]
id = "{id}"
allow_root = true  # the tests may run as root
slots = {slots}
launch_ahead = 0  # what finds no free slot waits in the dispatcher's queue
base_need = {nodes}
maximum_vms = {nodes}
labels = {{ zone = "{zone}", tier = "{tier}" }}
heartbeat_period = 0.2
heartbeat_warning = 1.0
heartbeat_missing = 2.0
terminate_grace = 1.0
"""
TWO_ENGINES = _ENGINE.format(id="a", slots=2, nodes=1, zone="a", tier=1) + _ENGINE.format(
    id="b", slots=2, nodes=1, zone="b", tier=2
)
TWO_NODES = _ENGINE.format(id="pack", slots=3, nodes=2, zone="p", tier=1)


@pytest.fixture(scope="module")
def shared(start_corral) -> Iterator:
    with start_corral(TWO_ENGINES) as corral:
        yield corral


@pytest.fixture
def corral(shared) -> Iterator:
    yield shared
    shared.stop_all()


def node_of(corral, engine: str) -> str:
    (node,) = corral.nodes(engine)
    return node["node_id"]


def runs_on(corral, gate: Path, **schedule) -> dict:
    """Schedule a process that blocks on ``gate``; return its record once RUNNING."""
    upid = corral.run(corral.WAIT_FOR_GATE, env={"GATE": gate}, **schedule)
    return corral.wait_state(upid, "500-RUNNING")


def test_a_constraint_value_places_the_process_on_a_matching_node(corral, gate: Path) -> None:
    record = runs_on(corral, gate, constraints={"zone": "b"})
    assert record["engine"] == "b"
    assert record["assigned"] == node_of(corral, "b")
    assert record["constraints"] == {"zone": "b"}


def test_a_list_of_allowed_values_places_the_process_on_a_node_with_one_of_them(
    corral, gate: Path
) -> None:
    record = runs_on(corral, gate, constraints={"zone": ["c", "b"]})
    assert record["assigned"] == node_of(corral, "b")


def test_a_number_constraint_matches_a_label_written_as_text(corral, gate: Path) -> None:
    record = runs_on(corral, gate, constraints={"tier": 2})
    assert record["assigned"] == node_of(corral, "b")


def test_constraints_match_the_node_s_own_properties(corral, gate: Path) -> None:
    target = node_of(corral, "b")
    by_id = runs_on(corral, gate, constraints={"node_id": target})
    assert by_id["assigned"] == target
    by_engine = runs_on(corral, gate, constraints={"engine": "b"})
    assert by_engine["assigned"] == target
    hostname = corral.nodes("b")[0]["hostname"]
    by_host = runs_on(corral, gate, constraints={"hostname": hostname, "zone": "a"})
    assert by_host["assigned"] == node_of(corral, "a")


def test_every_constraint_must_match(corral) -> None:
    upid = corral.run("exit 0", constraints={"zone": "a", "tier": "2"})
    waiting = corral.wait_state(upid, "300-WAITING")
    assert "constraints" in waiting["waiting_reason"]


def test_a_constraint_key_no_node_has_keeps_the_process_waiting_with_a_reason_naming_it(
    corral,
) -> None:
    upid = corral.run("exit 0", constraints={"gpu": "yes"})
    waiting = corral.wait_state(upid, "300-WAITING")
    assert "gpu" in waiting["waiting_reason"]
    assert "constraint" in waiting["waiting_reason"]
    assert waiting["assigned"] is None


def test_a_constraint_no_node_meets_rejects_a_process_that_may_not_wait(corral) -> None:
    upid = corral.run("exit 0", constraints={"zone": "z"}, queueing_mode="NEVER")
    ended = corral.wait_end(upid)
    assert ended["state"] == "900-REJECTED"
    assert "zone" in ended["end_reason"]


def test_execution_engine_id_pins_the_process_to_that_engine(corral, gate: Path) -> None:
    record = runs_on(corral, gate, execution_engine_id="b")
    assert record["engine"] == "b"
    assert record["execution_engine_id"] == "b"
    assert record["assigned"] == node_of(corral, "b")


def test_a_pinned_process_waits_for_its_engine_even_when_another_has_room(
    corral, gate: Path
) -> None:
    runs_on(corral, gate, execution_engine_id="b")
    runs_on(corral, gate, execution_engine_id="b")
    upid = corral.run("exit 0", execution_engine_id="b")
    waiting = corral.wait_state(upid, "300-WAITING")
    assert "'b'" in waiting["waiting_reason"]
    gate.touch()
    assert corral.wait_end(upid)["engine"] == "b"


def test_a_pinned_process_whose_constraints_its_engine_cannot_meet_waits(corral) -> None:
    upid = corral.run("exit 0", execution_engine_id="a", constraints={"zone": "b"})
    waiting = corral.wait_state(upid, "300-WAITING")
    assert "zone" in waiting["waiting_reason"]


def test_an_unknown_engine_is_an_invalid_request_naming_execution_engine_id(corral) -> None:
    with pytest.raises(InvalidRequest) as caught:
        corral.client.schedule_process(
            corral.unique("p"), corral.define("exit 0"), execution_engine_id="nope"
        )
    assert caught.value.field == "execution_engine_id"
    assert "nope" in caught.value.message


def test_without_pinning_the_default_engine_is_used_first(corral, gate: Path) -> None:
    assert runs_on(corral, gate)["engine"] == "a"
    assert runs_on(corral, gate)["engine"] == "a"


def test_without_pinning_a_process_runs_on_another_engine_when_the_default_is_full(
    corral, gate: Path
) -> None:
    runs_on(corral, gate, execution_engine_id="a")
    runs_on(corral, gate, execution_engine_id="a")
    assert runs_on(corral, gate)["engine"] == "b"


def test_node_exclusive_never_puts_two_processes_with_the_same_tag_on_one_node(
    corral, gate: Path
) -> None:
    first = runs_on(corral, gate, node_exclusive="db")
    second = runs_on(corral, gate, node_exclusive="db")
    assert {first["engine"], second["engine"]} == {"a", "b"}
    third = corral.run("exit 0", node_exclusive="db")
    waiting = corral.wait_state(third, "300-WAITING")
    assert "node_exclusive" in waiting["waiting_reason"]
    assert "db" in waiting["waiting_reason"]
    # another tag, or none, still fits beside them
    assert runs_on(corral, gate, node_exclusive="cache")["engine"] == "a"


def test_a_process_waiting_on_node_exclusive_runs_once_the_tag_leaves_the_node(
    corral, tmp_path: Path
) -> None:
    first = runs_on(corral, tmp_path / "first", execution_engine_id="a", node_exclusive="x")
    second = corral.run(
        corral.WAIT_FOR_GATE,
        env={"GATE": tmp_path / "second"},
        execution_engine_id="a",
        node_exclusive="x",
    )
    waiting = corral.wait_state(second, "300-WAITING")
    assert "node_exclusive" in waiting["waiting_reason"]
    corral.client.terminate_process(first["upid"])
    running = corral.wait_state(second, "500-RUNNING")
    assert running["assigned"] == first["assigned"]


def test_packing_fills_one_node_before_using_the_next(start_corral, tmp_path: Path) -> None:
    with start_corral(TWO_NODES) as corral:
        assert len(corral.ready_nodes("pack")) == 2
        gate = tmp_path / "gate"
        nodes = [runs_on(corral, gate)["assigned"] for _ in range(3)]
        assert len(set(nodes)) == 1
        definition = corral.define(corral.WAIT_FOR_GATE, env={"GATE": str(gate)})
        batch = corral.client.schedule_processes(
            [{"upid": f"batch-{i}", "definition_id": definition} for i in range(2)]
        )
        assert len(batch) == 2
        placed = [corral.wait_state(f"batch-{i}", "500-RUNNING")["assigned"] for i in range(2)]
        assert placed[0] == placed[1]
        assert placed[0] != nodes[0]
        gate.touch()
