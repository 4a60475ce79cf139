"""The matchmaker: invariants over random snapshots, then the rules one scenario at a time.

The property test replays a Match against the snapshot it came from, queue entry by queue
entry, with its own small model of the nodes (free slots, exclusive tags). At each entry it
checks what the matchmaker decided against what was possible at that moment.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.core.constraints import ReasonKind
from corral.core.ids import EngineId, Upid
from corral.core.matchmaker import Match, match
from corral.core.model import ConstraintValue, Resources
from corral.core.process_states import QueueingMode
from corral.core.snapshot import NodeView, Pending, Snapshot
from corral.testing import engine_view, node_view, pending, snapshot

ENGINE_IDS = ["default", "gpu", "big"]
PROPERTY_KEYS = ["zone", "disk", ""]
PROPERTY_VALUES = ["a", "b", "1", "true"]
TAGS = ["x", "y"]

# -- strategies --------------------------------------------------------------------------------

SCALARS: list[str | int | float | bool] = [*PROPERTY_VALUES, 1, 2, True, False, 1.5]
constraint_values: st.SearchStrategy[ConstraintValue] = st.one_of(
    st.sampled_from(SCALARS),
    st.lists(st.sampled_from(SCALARS), min_size=1, max_size=3),
)
constraint_maps = st.dictionaries(
    st.sampled_from([*PROPERTY_KEYS, "missing"]), constraint_values, max_size=2
)


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    engine_ids = draw(st.lists(st.sampled_from(ENGINE_IDS), min_size=1, max_size=3, unique=True))
    engines = [
        engine_view(
            e,
            booting=draw(st.integers(0, 2)),
            maximum_vms=draw(st.integers(0, 4)),
        )
        for e in engine_ids
    ]
    n_nodes = draw(st.integers(0, 6))
    nodes = [
        node_view(
            f"n{i}",
            # now and then a node of an engine that is no longer configured
            engine=draw(st.sampled_from([*engine_ids, "retired"])),
            slots=(slots := draw(st.integers(1, 4))),
            # a stale round can leave a node over-full
            used=draw(st.integers(0, slots + 1)),
            properties=draw(
                st.dictionaries(
                    st.sampled_from(PROPERTY_KEYS), st.sampled_from(PROPERTY_VALUES), max_size=3
                )
            ),
            exclusive_tags=draw(st.sets(st.sampled_from(TAGS), max_size=2)),
            accepting=draw(st.booleans() | st.just(True)),
        )
        for i in range(n_nodes)
    ]
    n_queue = draw(st.integers(0, 12))
    queue = [
        pending(
            f"p{i}",
            round=draw(st.integers(0, 3)),
            constraints=draw(st.just({}) | constraint_maps),
            engine=draw(st.none() | st.sampled_from([*engine_ids, "nowhere"])),
            node_exclusive=draw(st.none() | st.sampled_from(TAGS)),
            queueing_mode=draw(st.sampled_from(list(QueueingMode))),
            is_restart=draw(st.booleans()),
            has_reason=draw(st.booleans()),
        )
        for i in range(n_queue)
    ]
    return snapshot(nodes=nodes, queue=queue, engines=engines)


# -- an independent model of the rules ---------------------------------------------------------


def _scalar(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _text(value: ConstraintValue) -> str | set[str]:
    """Constraints compare as text; a list allows any of its values."""
    if isinstance(value, list):
        return {_scalar(v) for v in value}
    return _scalar(value)


def _satisfies(constraints: Mapping[str, ConstraintValue], properties: Mapping[str, str]) -> bool:
    for key, wanted in constraints.items():
        if key not in properties:
            return False
        allowed = _text(wanted)
        have = properties[key]
        if (have not in allowed) if isinstance(allowed, set) else (have != allowed):
            return False
    return True


@dataclass
class _Model:
    """What each node has free, as placements are replayed in queue order."""

    snap: Snapshot
    free: dict[str, int] = field(default_factory=dict)
    used: dict[str, int] = field(default_factory=dict)
    tags: dict[str, set[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for node in self.snap.nodes:
            self.free[node.node_id] = node.slots - node.used
            self.used[node.node_id] = node.used
            self.tags[node.node_id] = set(node.exclusive_tags)

    def engines_for(self, p: Pending) -> list[EngineId]:
        configured = [e.engine_id for e in self.snap.engines]
        if p.execution_engine_id is None:
            return configured
        return [p.execution_engine_id] if p.execution_engine_id in configured else []

    def fits(self, p: Pending, node: NodeView) -> bool:
        return (
            node.accepting
            and self.free[node.node_id] > 0
            and _satisfies(p.constraints, node.properties)
            and (p.node_exclusive is None or p.node_exclusive not in self.tags[node.node_id])
        )

    def fitting(self, p: Pending, engine_id: str) -> list[NodeView]:
        return [n for n in self.snap.nodes if n.engine == engine_id and self.fits(p, n)]

    def total_free(self) -> int:
        configured = {e.engine_id for e in self.snap.engines}
        return sum(
            max(self.free[n.node_id], 0)
            for n in self.snap.nodes
            if n.accepting and n.engine in configured
        )

    def place(self, p: Pending, node: NodeView) -> None:
        self.free[node.node_id] -= 1
        self.used[node.node_id] += 1
        if p.node_exclusive is not None:
            self.tags[node.node_id].add(p.node_exclusive)


def _replay(snap: Snapshot, result: Match) -> list[str]:
    """Check ``result`` entry by entry; return the upids the matchmaker skipped."""
    nodes = {n.node_id: n for n in snap.nodes}
    placed = {pl.upid: pl for pl in result.placements}
    assert len(placed) == len(result.placements), "a process was placed twice"
    assert [pl.upid for pl in result.placements] == [
        p.upid for p in snap.queue if p.upid in placed
    ], "placements are not in queue order"
    model = _Model(snap)
    skipped: list[str] = []
    for p in snap.queue:
        outcomes = [p.upid in placed, p.upid in result.waiting, p.upid in result.rejected]
        assert sum(outcomes) <= 1, f"{p.upid} has more than one outcome"
        engines = model.engines_for(p)
        if p.upid in placed:
            placement = placed[p.upid]
            node = nodes[placement.node_id]
            assert placement.round == p.round
            assert node.engine in engines, f"{p.upid} placed outside its engines"
            assert model.fits(p, node), f"{p.upid} placed on {node.node_id}, which does not fit"
            # default engine first: no earlier engine in configuration order had room
            for earlier in engines[: engines.index(node.engine)]:
                assert not model.fitting(p, earlier), f"{p.upid} skipped engine {earlier}"
            # packing: no fitting node of that engine was busier
            busiest = max(model.used[n.node_id] for n in model.fitting(p, node.engine))
            assert model.used[node.node_id] == busiest, f"{p.upid} not on the busiest node"
            model.place(p, node)
        elif p.upid in result.waiting or p.upid in result.rejected:
            for engine_id in engines:
                assert not model.fitting(p, engine_id), f"{p.upid} fits {engine_id} yet waits"
            assert (p.upid in result.rejected) is not p.queueing_mode.may_wait(p.is_restart)
        else:
            assert p.has_reason, f"{p.upid} has no outcome and no reason from before"
            assert model.total_free() <= 0, f"{p.upid} skipped while a slot was free"
            skipped.append(p.upid)
    known = {p.upid for p in snap.queue}
    assert set(result.waiting) <= known
    assert set(result.rejected) <= known
    return skipped


# -- properties --------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshots())
def test_every_decision_holds_against_a_replay_of_the_snapshot(snap):
    # covers: no slot over-committed, node_exclusive honoured (tags already there count),
    # constraints and pins satisfied, the busiest fitting node, engines in order, nothing
    # left waiting that fits, rejection only when the queueing mode forbids waiting, and
    # skipping only a process that already has a reason when nothing is free
    _replay(snap, match(snap))


# the replay above checks the next two as well; these say them on their own, more cheaply
@settings(max_examples=60, deadline=None)
@given(snapshots())
def test_no_node_gets_more_work_than_it_has_free_slots(snap):
    result = match(snap)
    for node in snap.nodes:
        placed_here = sum(1 for pl in result.placements if pl.node_id == node.node_id)
        assert placed_here <= max(node.slots - node.used, 0)
        if not node.accepting:
            assert placed_here == 0


@settings(max_examples=60, deadline=None)
@given(snapshots())
def test_no_node_ever_runs_two_processes_with_one_exclusive_tag(snap):
    result = match(snap)
    by_upid = {p.upid: p for p in snap.queue}
    for node in snap.nodes:
        tags = [
            by_upid[pl.upid].node_exclusive
            for pl in result.placements
            if pl.node_id == node.node_id and by_upid[pl.upid].node_exclusive is not None
        ]
        assert len(tags) == len(set(tags))
        assert not set(tags) & node.exclusive_tags


@settings(max_examples=120, deadline=None)
@given(snapshots())
def test_a_process_is_never_placed_while_an_earlier_identical_one_waits(snap):
    result = match(snap)
    placed = {pl.upid for pl in result.placements}

    def needs(p: Pending) -> tuple[object, ...]:
        return (sorted(p.constraints.items(), key=repr), p.execution_engine_id, p.node_exclusive)

    for i, first in enumerate(snap.queue):
        if first.upid in placed:
            continue
        for later in snap.queue[i + 1 :]:
            if needs(later) == needs(first):
                assert later.upid not in placed, f"{later.upid} overtook {first.upid}"


@settings(max_examples=60, deadline=None)
@given(snapshots())
def test_every_queued_process_is_placed_waiting_or_rejected_when_a_slot_is_free(snap):
    # with has_reason cleared nothing may be skipped, whatever the nodes look like
    fresh = replace(snap, queue=tuple(replace(p, has_reason=False) for p in snap.queue))
    result = match(fresh)
    decided = {pl.upid for pl in result.placements} | set(result.waiting) | set(result.rejected)
    assert decided == {p.upid for p in fresh.queue}
    assert _replay(fresh, result) == []


# -- packing and order -------------------------------------------------------------------------


def test_work_packs_onto_the_busiest_fitting_node():
    snap = snapshot(
        nodes=[node_view("idle", slots=4), node_view("busy", slots=4, used=3)],
        queue=[pending("p1"), pending("p2")],
    )
    result = match(snap)
    # p1 fills the busy node; p2 then goes to the idle one, the only one left with room
    assert [(pl.upid, pl.node_id) for pl in result.placements] == [
        ("p1", "busy"),
        ("p2", "idle"),
    ]


def test_a_node_made_busier_by_this_match_attracts_the_next_process():
    snap = snapshot(
        nodes=[node_view("a", slots=4, used=1), node_view("b", slots=4, used=1)],
        queue=[pending("p1"), pending("p2"), pending("p3")],
    )
    assert {pl.node_id for pl in match(snap).placements} == {"a"}


def test_the_default_engine_is_tried_before_the_others():
    snap = snapshot(
        engines=["default", "other"],
        nodes=[node_view("o1", engine="other", used=3), node_view("d1", engine="default")],
        queue=[pending("p1")],
    )
    assert match(snap).placements[0].node_id == "d1"


def test_another_engine_takes_the_process_when_the_default_is_full():
    snap = snapshot(
        engines=["default", "other"],
        nodes=[node_view("d1", slots=1, used=1), node_view("o1", engine="other")],
        queue=[pending("p1")],
    )
    assert match(snap).placements[0].node_id == "o1"


def test_a_pinned_process_stays_on_its_engine_even_when_the_default_has_room():
    snap = snapshot(
        engines=["default", "gpu"],
        nodes=[node_view("d1"), node_view("g1", engine="gpu", slots=1, used=1)],
        queue=[pending("p1", engine="gpu")],
    )
    result = match(snap)
    assert result.placements == ()
    assert result.waiting[Upid("p1")].kind is ReasonKind.SLOTS


def test_a_node_that_is_not_accepting_gets_no_work():
    snap = snapshot(nodes=[node_view("n1", accepting=False)], queue=[pending("p1")])
    result = match(snap)
    assert result.placements == ()
    assert result.waiting[Upid("p1")].kind is ReasonKind.NO_NODES


def test_placements_carry_the_round_they_were_decided_for():
    snap = snapshot(nodes=[node_view("n1")], queue=[pending("p1", round=4)])
    assert match(snap).placements[0].round == 4


def test_a_process_that_already_has_a_reason_is_skipped_when_nothing_is_free():
    snap = snapshot(
        nodes=[node_view("n1", slots=1, used=1)],
        queue=[pending("p1", has_reason=True), pending("p2")],
    )
    result = match(snap)
    assert Upid("p1") not in result.waiting
    assert Upid("p2") in result.waiting


def test_a_process_that_already_has_a_reason_is_skipped_once_this_match_fills_the_last_slot():
    snap = snapshot(
        nodes=[node_view("n1", slots=1)],
        queue=[pending("p1"), pending("p2", has_reason=True), pending("p3")],
    )
    result = match(snap)
    assert [pl.upid for pl in result.placements] == ["p1"]
    assert set(result.waiting) == {"p3"}


@given(snapshots())
def test_reading_only_the_fresh_processes_once_slots_run_out_decides_the_same(snap):
    fresh = [p for p in snap.queue if not p.has_reason]
    consumed: list[str] = []

    def watched(queue: Iterable[Pending]) -> Iterator[Pending]:
        for item in queue:
            consumed.append(item.upid)
            yield item

    lazy = replace(snap, queue=watched(snap.queue), fresh=fresh)
    assert match(lazy) == match(snap)
    free = sum(max(n.slots - n.used, 0) for n in snap.nodes if n.accepting)
    if free == 0:
        assert len(consumed) <= 1  # the queue is not read on once no slot is left


def test_a_process_that_already_has_a_reason_is_placed_when_a_slot_is_free():
    snap = snapshot(nodes=[node_view("n1")], queue=[pending("p1", has_reason=True)])
    assert [pl.upid for pl in match(snap).placements] == ["p1"]


# -- constraints, exclusivity and rejection ----------------------------------------------------


@pytest.mark.parametrize(
    ("constraints", "placed"),
    [
        ({"zone": "a"}, True),
        ({"zone": "b"}, False),
        ({"zone": ["b", "a"]}, True),
        ({"zone": ["b", "c"]}, False),
        ({"size": 1}, True),
        ({"gpu": True}, True),
        ({"gpu": False}, False),
        ({"absent": "a"}, False),
        ({"": "a"}, False),
        ({"zone": "a", "size": 2}, False),
    ],
)
def test_a_process_lands_only_on_a_node_its_constraints_match(constraints, placed):
    node = node_view("n1", properties={"zone": "a", "size": "1", "gpu": "true"})
    result = match(snapshot(nodes=[node], queue=[pending("p1", constraints=constraints)]))
    assert bool(result.placements) is placed


def test_an_exclusive_tag_already_on_a_node_keeps_a_second_one_off():
    snap = snapshot(
        nodes=[node_view("n1", exclusive_tags={"db"}), node_view("n2")],
        queue=[pending("p1", node_exclusive="db"), pending("p2", node_exclusive="db")],
    )
    result = match(snap)
    assert [(pl.upid, pl.node_id) for pl in result.placements] == [("p1", "n2")]
    assert result.waiting[Upid("p2")].kind is ReasonKind.EXCLUSIVE


def test_different_exclusive_tags_share_a_node():
    snap = snapshot(
        nodes=[node_view("n1")],
        queue=[pending("p1", node_exclusive="db"), pending("p2", node_exclusive="web")],
    )
    assert len(match(snap).placements) == 2


@pytest.mark.parametrize(
    ("mode", "is_restart", "rejected"),
    [
        (QueueingMode.NEVER, False, True),
        (QueueingMode.NEVER, True, True),
        (QueueingMode.ALWAYS, False, False),
        (QueueingMode.ALWAYS, True, False),
        (QueueingMode.START_ONLY, False, False),
        (QueueingMode.START_ONLY, True, True),
        (QueueingMode.RESTART_ONLY, False, True),
        (QueueingMode.RESTART_ONLY, True, False),
    ],
)
def test_a_process_without_a_slot_is_rejected_only_when_its_mode_forbids_waiting(
    mode, is_restart, rejected
):
    snap = snapshot(
        nodes=[node_view("n1", slots=1, used=1)],
        queue=[pending("p1", queueing_mode=mode, is_restart=is_restart)],
    )
    result = match(snap)
    assert (Upid("p1") in result.rejected) is rejected
    assert (Upid("p1") in result.waiting) is not rejected


def test_a_process_with_a_slot_is_placed_whatever_its_queueing_mode():
    snap = snapshot(
        nodes=[node_view("n1")],
        queue=[pending("p1", queueing_mode=QueueingMode.NEVER)],
    )
    assert [pl.upid for pl in match(snap).placements] == ["p1"]


# -- reasons -----------------------------------------------------------------------------------


def _reason(snap: Snapshot, upid: str = "p1") -> tuple[ReasonKind, str]:
    result = match(snap)
    reason = result.waiting.get(Upid(upid)) or result.rejected[Upid(upid)]
    return reason.kind, reason.message


def test_a_constraint_mismatch_names_the_constraint():
    kind, message = _reason(
        snapshot(
            nodes=[node_view("n1", properties={"zone": "a"})],
            queue=[pending("p1", constraints={"zone": "b"})],
        )
    )
    assert kind is ReasonKind.CONSTRAINTS
    assert "zone=b" in message
    assert "'default'" in message


def test_an_exclusive_conflict_names_the_tag():
    kind, message = _reason(
        snapshot(
            nodes=[node_view("n1", exclusive_tags={"db"})],
            queue=[pending("p1", node_exclusive="db")],
        )
    )
    assert kind is ReasonKind.EXCLUSIVE
    assert "node_exclusive 'db'" in message


def test_full_nodes_say_there_is_no_free_slot():
    kind, message = _reason(
        snapshot(
            nodes=[node_view("n1", slots=1, used=1), node_view("n2", slots=2, used=2)],
            queue=[pending("p1")],
        )
    )
    assert kind is ReasonKind.SLOTS
    assert message.startswith("no free slot: the 2 matching nodes have no free slot")


def test_full_nodes_say_so_also_when_the_process_has_constraints():
    kind, message = _reason(
        snapshot(
            nodes=[node_view("n1", slots=1, used=1, properties={"zone": "a"})],
            queue=[pending("p1", constraints={"zone": "a"})],
        )
    )
    assert kind is ReasonKind.SLOTS
    assert "the 1 matching node has no free slot" in message


def test_full_nodes_mention_the_nodes_booting():
    _, message = _reason(
        snapshot(
            engines=[engine_view("default", booting=2, maximum_vms=4)],
            nodes=[node_view("n1", slots=1, used=1)],
            queue=[pending("p1")],
        )
    )
    assert message.endswith("; 2 node(s) booting")


def test_full_nodes_at_maximum_vms_say_so():
    _, message = _reason(
        snapshot(
            engines=[engine_view("default", maximum_vms=1)],
            nodes=[node_view("n1", slots=1, used=1)],
            queue=[pending("p1")],
        )
    )
    assert message.endswith("; at maximum_vms (1)")


def test_no_node_up_says_how_many_are_booting():
    kind, message = _reason(
        snapshot(engines=[engine_view("default", booting=3)], queue=[pending("p1")])
    )
    assert kind is ReasonKind.NO_NODES
    assert message == "no node of engine 'default' is up; 3 booting"


def test_no_node_up_and_none_booting_says_just_that():
    assert _reason(snapshot(queue=[pending("p1")]))[1] == "no node of engine 'default' is up"


def test_an_unknown_pinned_engine_is_named():
    kind, message = _reason(snapshot(nodes=[node_view("n1")], queue=[pending("p1", engine="gpu")]))
    assert kind is ReasonKind.UNKNOWN_ENGINE
    assert "'gpu'" in message


def test_the_most_specific_reason_over_all_engines_is_kept():
    # the default engine has no node at all; the other one has a node that does not match:
    # "change your constraints" tells the user more than "no node is up"
    kind, message = _reason(
        snapshot(
            engines=["default", "other"],
            nodes=[node_view("o1", engine="other", properties={"zone": "a"})],
            queue=[pending("p1", constraints={"zone": "b"})],
        )
    )
    assert kind is ReasonKind.CONSTRAINTS
    assert "'other'" in message


def test_a_rejection_says_which_queueing_mode_refused_to_wait():
    kind, message = _reason(
        snapshot(
            nodes=[node_view("n1", slots=1, used=1)],
            queue=[pending("p1", queueing_mode=QueueingMode.START_ONLY, is_restart=True)],
        )
    )
    assert kind is ReasonKind.SLOTS
    assert message.endswith("; queueing_mode START_ONLY does not let a restart wait")


def test_cloud_trouble_is_part_of_the_waiting_reason():
    full = snapshot(
        nodes=[node_view("n1", slots=1, used=1)],
        queue=[pending("p1")],
        engines=[engine_view("default", trouble="cloud quota reached")],
    )
    assert _reason(full)[1].endswith("; cloud quota reached")
    empty = snapshot(
        queue=[pending("p1")], engines=[engine_view("default", trouble="cloud rate limited")]
    )
    assert _reason(empty)[1] == "no node of engine 'default' is up; cloud rate limited"


def test_a_process_that_needs_resources_goes_where_they_are_free():
    needs = Resources(cpus=4, memory=1024)
    snap = snapshot(
        nodes=[
            node_view("busy-small", used=2, room=Resources(2, 8192)),
            node_view("roomy", used=0, room=Resources(8, 8192)),
        ],
        queue=[pending("p1", resources=needs)],
    )
    assert [pl.node_id for pl in match(snap).placements] == ["roomy"]


def test_resources_taken_in_one_match_are_not_given_twice():
    needs = Resources(cpus=2)
    snap = snapshot(
        nodes=[node_view("n1", room=Resources(3, 4096))],
        queue=[pending("p1", resources=needs), pending("p2", resources=needs)],
    )
    result = match(snap)
    assert [pl.upid for pl in result.placements] == ["p1"]
    kind, message = _reason(snap, "p2")
    assert kind is ReasonKind.RESOURCES
    assert message == "no node of engine 'default' has 2 cpus, 0 MiB memory free"


def test_a_slots_only_node_takes_any_resources():
    snap = snapshot(
        nodes=[node_view("n1")], queue=[pending("p1", resources=Resources(64, 10**6, 8))]
    )
    assert [pl.node_id for pl in match(snap).placements] == ["n1"]
