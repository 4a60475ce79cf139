"""Public test helpers for code built on corral, as ``trio.testing`` is for trio.

Owns fakes and builders that tests (ours and users') share: :class:`ManualClock`, a
:class:`corral.clock.Clock` that moves only when told, and the factories of core records
and matchmaker snapshots. ``lifecycle_doc`` renders ``docs/lifecycle.md`` from the state
machines. ``corral.testing.dispatcher`` (a real dispatcher in a thread) is not imported
here, so importing this package stays as light as ``corral.core``: nothing below may
import the dispatcher, the store or the network.
"""

from corral.testing.clock import ManualClock
from corral.testing.factories import (
    engine,
    engine_view,
    node_view,
    pending,
    process_record,
    snapshot,
)

__all__ = [
    "ManualClock",
    "engine",
    "engine_view",
    "node_view",
    "pending",
    "process_record",
    "snapshot",
]
