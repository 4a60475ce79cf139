"""A pipeline whose one step notes when it starts and ends each event, and may be slow.

``started NAME`` and ``done NAME`` lines go to the file named by the ``marks`` key, so a test
counts from the OS's side how many times each event was handled.
"""

from __future__ import annotations

import os
import time
from typing import Any, ClassVar

from corral.pipeline import Arguments, BasePipeline, BasePrimitive
from corral.pipeline.pipeline import TableEntry


def _mark(path: str, line: str) -> None:
    with open(path, "a") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


class Work(BasePrimitive):
    def _perform(self) -> Any:
        name = self.action.args.name
        _mark(self.config.marks, f"started {name} {os.getpid()}")
        if name.endswith(self.config.slow_suffix):
            time.sleep(float(self.config.slow_seconds))
        _mark(self.config.marks, f"done {name} {os.getpid()}")
        return Arguments(name=name)


class MarkedPipeline(BasePipeline):
    event_table: ClassVar[dict[str, TableEntry]] = {
        "next_file": ("work", "worked", "worked"),
        "worked": ("note", "noted", None),
    }

    def work(self, action: Any, context: Any) -> Any:
        return Work(action, context)()

    def note(self, action: Any, context: Any) -> Any:
        context.logger.info("noted %s", action.args.name)
        return None
