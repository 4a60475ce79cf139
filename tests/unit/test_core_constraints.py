"""Constraint checks: values compare as text, lists allow any value, missing keys never match."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.core.constraints import (
    ReasonKind,
    constraint_text,
    describe_constraints,
    unmet_constraint,
)
from corral.core.model import ConstraintValue

PROPS = {"zone": "a", "size": "1", "gpu": "true", "ratio": "1.5"}


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("a", "a"),
        (1, "1"),
        (1.5, "1.5"),
        (True, "true"),
        (False, "false"),
        (["a", 1, True], ["a", "1", "true"]),
    ],
)
def test_constraints_compare_as_text_as_toml_labels_do(value, text):
    assert constraint_text(value) == text


@pytest.mark.parametrize(
    "constraints",
    [
        {},
        {"zone": "a"},
        {"size": 1},
        {"gpu": True},
        {"ratio": 1.5},
        {"zone": ["b", "a"]},
        {"zone": "a", "size": "1"},
    ],
)
def test_a_node_whose_properties_satisfy_every_constraint_fits(constraints):
    assert unmet_constraint(constraints, PROPS) is None


@pytest.mark.parametrize(
    ("constraints", "unmet"),
    [
        ({"zone": "b"}, "zone"),
        ({"zone": ["b", "c"]}, "zone"),
        ({"zone": []}, "zone"),
        ({"gpu": False}, "gpu"),
        ({"size": 2}, "size"),
        ({"absent": "a"}, "absent"),
        ({"": "a"}, ""),
        ({"zone": "a", "size": 2, "absent": 1}, "size"),
    ],
)
def test_the_first_unmet_constraint_is_named(constraints, unmet):
    assert unmet_constraint(constraints, PROPS) == unmet


def test_a_missing_key_never_matches_whatever_the_value():
    values: list[ConstraintValue] = ["", "a", ["", "a"], 0, False]
    for wanted in values:
        assert unmet_constraint({"absent": wanted}, PROPS) == "absent"


def test_matching_is_case_sensitive():
    assert unmet_constraint({"zone": "A"}, PROPS) == "zone"


keys = st.sampled_from(["zone", "size", "gpu", "", "other"])
scalars = st.one_of(st.sampled_from(["a", "b", "1", "true"]), st.integers(0, 2), st.booleans())


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(keys, st.one_of(scalars, st.lists(scalars, max_size=3))),
    st.dictionaries(keys, st.sampled_from(["a", "b", "1", "2", "true", "false"])),
)
def test_unmet_constraint_is_none_exactly_when_every_key_is_satisfied(constraints, properties):
    def ok(key: str) -> bool:
        if key not in properties:
            return False
        wanted = constraint_text(constraints[key])
        allowed = wanted if isinstance(wanted, list) else [wanted]
        return properties[key] in allowed

    first_unmet = next((k for k in constraints if not ok(k)), None)
    assert unmet_constraint(constraints, properties) == first_unmet


def test_constraints_are_described_sorted_by_key():
    assert describe_constraints({"zone": "a", "gpu": True, "size": [1, 2]}) == (
        "gpu=true, size=['1', '2'], zone=a"
    )


def test_reason_kinds_run_from_the_least_to_the_most_specific():
    order = [
        ReasonKind.NO_NODES,
        ReasonKind.CONSTRAINTS,
        ReasonKind.EXCLUSIVE,
        ReasonKind.RESOURCES,
        ReasonKind.SLOTS,
        ReasonKind.UNKNOWN_ENGINE,
    ]
    assert sorted(ReasonKind, key=lambda k: k.value) == order
