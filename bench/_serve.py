"""Start and stop a real ``corral serve`` for the benchmarks, and the percentiles they print
(a helper, not a benchmark)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from corral.testing.serve import ServeProcess
from corral.tls import CERTIFICATE_FILE


class Served(ServeProcess):
    """A ``corral serve`` subprocess on a fresh home (removed on ``stop``) and a free port."""

    def __init__(
        self,
        config: str | None = None,
        store_url: str | None = None,
        prepare: Callable[[str], None] | None = None,
        home_base: str | None = None,
        serve_args: tuple[str, ...] = (),
    ) -> None:
        """``serve_args`` go to ``corral serve`` (``--tls``, say)."""
        home = Path(tempfile.mkdtemp(prefix="corral-bench-", dir=home_base))
        if prepare is not None:
            prepare(str(home))
        super().__init__(home, config, store_url=store_url, log_level="warning")
        self.argv += serve_args
        self.start()

    @property
    def ca(self) -> Path | None:
        """The certificate to trust, when it serves over TLS."""
        return self.home / CERTIFICATE_FILE if self.url.startswith("https:") else None

    @classmethod
    def prepared(cls, prepare: Callable[[str], None]) -> Served:
        """A dispatcher on a home that ``prepare`` filled before it starts."""
        return cls(prepare=prepare)

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.home, ignore_errors=True)


def cores() -> int:
    return os.cpu_count() or 1


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
