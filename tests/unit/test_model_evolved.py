"""``evolved``, the dispatcher's fast ``dataclasses.replace`` for process records: the same
record for any changes, and the same refusal of a name that is not a field."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.core.model import ProcessRecord, evolved
from corral.core.process_states import ProcessState
from corral.testing import process_record

_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "state": st.sampled_from(list(ProcessState)),
    "round": st.integers(0, 1000),
    "scheduled": st.booleans(),
    "assigned": st.none() | st.text(min_size=1, max_size=8),
    "pid": st.none() | st.integers(1, 2**22),
    "starts": st.integers(0, 100),
    "exit_code": st.none() | st.integers(0, 255),
    "waiting_reason": st.none() | st.text(max_size=20),
    "updated_at": st.floats(0, 2e9),
    "disconnected_since": st.none() | st.floats(0, 2e9),
}


@given(st.fixed_dictionaries({}, optional=_VALUES))
def test_evolved_makes_the_record_replace_makes(changes: dict[str, Any]) -> None:
    record = process_record(state=ProcessState.RUNNING, pid=42, starts=1)
    new = evolved(record, **changes)
    assert new == replace(record, **changes)
    assert type(new) is ProcessRecord
    # the original is untouched, and every field of the new one is set
    assert record == process_record(state=ProcessState.RUNNING, pid=42, starts=1)
    assert all(hasattr(new, f.name) for f in fields(ProcessRecord))


def test_evolved_refuses_a_name_that_is_not_a_field() -> None:
    record = process_record(state=ProcessState.RUNNING)
    with pytest.raises(TypeError, match="no field colour"):
        evolved(record, colour="red")
