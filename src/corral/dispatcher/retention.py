"""The retention loop: forgets ended processes once they pass the configured bounds.

Which ones go is ``core.retention``'s decision; this loop asks it every few seconds and
removes what it names, records and histories together, a batch per transaction so that a
large backlog (a lowered bound, a dispatcher that was down for a day) never stalls the
dispatcher.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from corral.clock import Clock
from corral.core.ids import Upid
from corral.core.retention import Retention, expired
from corral.dispatcher.state import State

log = logging.getLogger("corral.retention")

#: seconds between passes that find nothing more to forget
PASS_EVERY = 5.0
#: processes forgotten per transaction
BATCH = 1000


class Reaper:
    def __init__(
        self,
        state: State,
        retention: Retention,
        clock: Clock,
        on_forgotten: Callable[[int], None] = lambda count: None,
    ) -> None:
        """``on_forgotten`` hears how many went, after each batch is committed."""
        self._state = state
        self._retention = retention
        self._clock = clock
        self._on_forgotten = on_forgotten

    def due(self) -> list[Upid]:
        """The ended processes to forget now (a batch at most), oldest first."""
        ended = self._state.ended
        return expired(ended.items(), len(ended), self._clock.time(), self._retention, BATCH)

    async def pass_once(self) -> int:
        """Forget one batch of what is due; return how many were due."""
        due = self.due()
        if due:
            # Only what the store holds as ended may go: let the changes in flight land.
            await self._state.flush()
            gone, committed = self._state.forget_processes(due)
            await committed
            self._on_forgotten(gone)
            # a line every pass at the bound would be noise: corral_processes_forgotten counts
            log.debug("forgot %d ended process(es), the oldest first", gone)
        return len(due)

    async def run(self) -> None:
        if not self._retention.bounded:
            return
        while True:
            try:
                if await self.pass_once() == BATCH:
                    continue  # more is due: the commit just awaited let the rest run
            except Exception:
                log.exception("forgetting ended processes failed")
            await asyncio.sleep(PASS_EVERY)
