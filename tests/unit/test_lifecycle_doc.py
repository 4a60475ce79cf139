"""docs/lifecycle.md is rendered from the state machines and must not go stale."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from corral.core.node_states import NodeState
from corral.core.process_states import TRANSITIONS, ProcessEvent, ProcessState
from corral.testing.lifecycle_doc import REGENERATE, process_moves, render

PAGE = Path(__file__).resolve().parents[2] / "docs" / "lifecycle.md"


def test_the_committed_lifecycle_page_is_what_the_code_renders():
    committed = PAGE.read_text(encoding="utf-8") if PAGE.exists() else ""
    assert committed == render(), f"{PAGE} is stale; regenerate it with: {REGENERATE}"


def test_the_page_has_a_row_for_every_event_state_and_node_state():
    page = render()
    for event in ProcessEvent:
        assert f"| `{event.value}` |" in page
    for state in ProcessState:
        assert f"| `{state}` |" in page
    for node_state in NodeState:
        assert f"| `{node_state}` |" in page


def test_each_event_row_moves_to_the_target_in_the_table():
    page = render()
    for event, transition in TRANSITIONS.items():
        rows = [line for line in page.splitlines() if line.startswith(f"| `{event.value}` |")]
        assert rows, event
        assert all(f"| `{transition.target}` |" in row for row in rows)


def test_the_rendered_sources_include_every_source_in_the_table():
    for event, transition in TRANSITIONS.items():
        rendered = {s for sources in process_moves(event).values() for s in sources}
        assert set(transition.sources) <= rendered


def test_scheduling_a_finished_process_shows_as_its_own_new_round_row():
    moves = process_moves(ProcessEvent.SCHEDULE)
    assert moves[False] == [None, ProcessState.UNSCHEDULED]
    assert moves[True] == [
        ProcessState.TERMINATED,
        ProcessState.EXITED,
        ProcessState.FAILED,
        ProcessState.REJECTED,
    ]


def test_the_module_prints_the_page():
    out = subprocess.run(
        [sys.executable, "-m", "corral.testing.lifecycle_doc"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert out == render()
