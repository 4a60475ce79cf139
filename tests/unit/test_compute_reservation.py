"""Where a pool worker listens is read from its log, even once the log's start was dropped."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from corral.compute.reservation import Reservation
from corral.compute.worker import LISTENING


class Dispatcher:
    """A dispatcher whose worker log kept only its newest bytes, from offset ``kept``."""

    def __init__(self, log: str, kept: int) -> None:
        self.log, self.kept = log, kept
        self.reads: list[int] = []

    async def wait_process(
        self,
        upid: str,
        states: list[str],
        timeout: float,  # noqa: ASYNC109 - the client's own signature
    ) -> dict[str, Any]:
        return {"upid": upid, "state": "500-RUNNING"}

    async def read_log(self, upid: str, stream: str, offset: int, limit: int) -> dict[str, Any]:
        self.reads.append(offset)
        if offset < self.kept:
            return {"data": "", "offset": offset, "next_offset": self.kept, "size": len(self.log)}
        data = self.log[offset : offset + limit]
        return {"data": data, "offset": offset, "next_offset": offset + len(data)}


def test_the_address_is_found_past_the_dropped_start_of_the_log() -> None:
    noise = "x" * 1000 + "\n"
    log = noise + f"{LISTENING} 127.0.0.1:4242\n"
    dispatcher = Dispatcher(log, kept=len(noise) - 10)
    reservation = Reservation(dispatcher, "c", "python3")  # type: ignore[arg-type]
    found = asyncio.run(reservation.address_of("c-w0", time.monotonic() + 2))
    assert found == ("127.0.0.1", 4242)
    assert dispatcher.reads == [0, len(noise) - 10]
