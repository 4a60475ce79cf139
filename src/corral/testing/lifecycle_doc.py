"""Render ``docs/lifecycle.md`` from the state machines in ``corral.core``.

The page is generated, never edited by hand; ``tests/unit/test_lifecycle_doc.py`` fails
when the committed page differs from what the code renders. Regenerate it with::

    python -m corral.testing.lifecycle_doc > docs/lifecycle.md

The process table follows :data:`~corral.core.process_states.TRANSITIONS` (events in its
order, targets from it), with the sources found by applying
:func:`~corral.core.process_states.advance` to every state, so the page shows what the code
does, including the one move ``advance`` makes outside the table (scheduling a finished
process again). The node table is :data:`~corral.core.node_states.NODE_TRANSITIONS`, read
the same way through :func:`~corral.core.node_states.advance_node`. The last table applies
:func:`~corral.core.disconnect.verdict` to three disconnect policies.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from corral.core.disconnect import DisconnectPolicy, Verdict, verdict
from corral.core.node_states import NodeState, advance_node
from corral.core.process_states import (
    TRANSITIONS,
    ProcessEvent,
    ProcessState,
    advance,
)
from corral.errors import IllegalTransition

REGENERATE = "python -m corral.testing.lifecycle_doc > docs/lifecycle.md"

_HEADER = f"""\
# Lifecycle

<!-- Generated from corral/core/process_states.py, node_states.py and disconnect.py.
     Do not edit: run `{REGENERATE}`.
     tests/unit/test_lifecycle_doc.py fails when this page is stale. -->

A process lives through *rounds*. Within a round its state only moves forward (the EPU
number grows); a restart, or scheduling a finished process again, opens the next round,
so the pair `(round, state)` only ever grows. Any move not listed here raises
`IllegalTransition`.

A placement is committed, `ASSIGNED` and `PENDING` in one transaction, before its launch
leaves for the node. A `PENDING` process may be waiting in its node's queue: when every
slot of an engine's nodes is busy, up to `launch_ahead` launches per node are placed ahead,
and the agent starts them, in order, as slots free. Dropped from that queue before it
started, a round ends without a run: `terminated` if it was being terminated, otherwise
`restart_now` (it was withdrawn to a slot that freed elsewhere), which places it again and
counts no dispatch attempt.
"""


def process_moves(event: ProcessEvent) -> dict[bool, list[ProcessState | None]]:
    """The states ``event`` moves a process out of, grouped by whether a round opens.

    Computed by applying :func:`advance` to every state (and to "no record yet").
    """
    moves: dict[bool, list[ProcessState | None]] = {}
    for state in (None, *ProcessState):
        try:
            round_, _ = advance(state, 0, event)
        except IllegalTransition:
            continue
        moves.setdefault(round_ > 0, []).append(state)
    return moves


def render() -> str:
    """The whole page, as committed in ``docs/lifecycle.md``."""
    parts = [
        _HEADER,
        _process_states(),
        _process_transitions(),
        _node_transitions(),
        _partitions(),
    ]
    return "\n".join(parts)


def _process_states() -> str:
    rows = [
        [
            f"`{state}`",
            _yes(state.is_queued),
            _yes(state.holds_slot),
            _yes(state.is_terminal),
        ]
        for state in ProcessState
    ]
    return _section(
        "Process states",
        "*Queued*: nothing runs for it yet; *slot*: it holds (or reserves) a slot on its node; "
        "*terminal*: only a restart or a new `schedule_process` moves it again; a process that "
        "stays terminal is forgotten past the retention (`ended_retention`, `ended_max`).",
        ["state", "queued", "slot", "terminal"],
        rows,
    )


def _process_transitions() -> str:
    rows: list[list[str]] = []
    for event, transition in TRANSITIONS.items():
        for new_round, sources in sorted(process_moves(event).items()):
            rows.append(
                [
                    f"`{event.value}`",
                    _states(sources),
                    f"`{transition.target}`",
                    _yes(new_round),
                ]
            )
    return _section(
        "Process transitions",
        "One row per event (two when only some of its sources open a new round); "
        "*none* is a process with no record yet.",
        ["event", "from", "to", "new round"],
        rows,
    )


def _node_transitions() -> str:
    rows = []
    for state in NodeState:
        targets = [t for t in NodeState if t is not state and _node_may(state, t)]
        rows.append([f"`{state}`", _states(targets) if targets else "*(final)*"])
    return _section(
        "Node transitions",
        "A node may always stay in its state; heartbeats classify its health as "
        "`ok`, `warning` (late) or `missing` by the dispatcher's own clock. A missing node "
        "is `disconnected` while some process on it waits out its disconnect grace, and "
        "lost (`gone`) once none does.",
        ["from", "may become"],
        rows,
    )


_FATES = {
    Verdict.KEEP: "kept: it goes on in its round",
    Verdict.LOSE: "lost: its restart mode applies",
    Verdict.REPLACE: "replaced at once by a new round",
}


def _partitions() -> str:
    cases = [
        ("none (`grace = 0`)", DisconnectPolicy()),
        ("`grace = 30`", DisconnectPolicy(grace=30.0)),
        ("`replace = true`", DisconnectPolicy(replace=True)),
    ]
    rows = [
        [name, _FATES[verdict(policy, 10.0)], _FATES[verdict(policy, 60.0)]]
        for name, policy in cases
    ]
    return _section(
        "Processes of a disconnected node",
        "What a process becomes while its node is disconnected, by its "
        "`configuration.corral.disconnect` (`core.disconnect.verdict`). The newest round "
        "always survives a heal: a kept process goes on where it was; once a new round "
        "exists, the old copy is stale and its agent kills it when the node is back. An "
        "at-most-once process (`restart_mode` NEVER, or `at_most_once`) gets no new round "
        "before its old copy has certainly stopped, and fails if that cannot be known.",
        ["disconnect policy", "disconnected for 10 s", "for 60 s"],
        rows,
    )


def _node_may(state: NodeState, target: NodeState) -> bool:
    try:
        advance_node(state, target)
    except IllegalTransition:
        return False
    return True


def _states(states: Iterable[ProcessState | NodeState | None]) -> str:
    return ", ".join("*none*" if s is None else f"`{s}`" for s in states)


def _yes(flag: bool) -> str:
    return "yes" if flag else ""


def _section(title: str, intro: str, head: list[str], rows: list[list[str]]) -> str:
    lines = [f"## {title}", "", intro, "", _row(head), _row(["---"] * len(head))]
    lines += [_row(row) for row in rows]
    return "\n".join(lines) + "\n"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
