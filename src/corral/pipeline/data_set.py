"""The files a pipeline ingests: a table of names and header keywords, and a monitor.

Ingesting a directory lists the files matching ``file_type`` and hands each new one to a
callback (the framework appends the ingestion event). Monitoring repeats that every
``monitor_interval`` seconds on a thread. FITS headers are read with astropy when it is
installed (the ``fits`` extra); other files are listed by name only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("corral.pipeline")

_FITS = (".fits", ".fit", ".fts", ".fits.gz")


def read_header(path: Path) -> dict[str, Any]:
    """The primary header's keywords of a FITS file (empty for other files or without astropy)."""
    if not path.name.lower().endswith(_FITS):
        return {}
    try:
        from astropy.io import fits  # an optional extra
    except ImportError:
        return {}
    try:
        header = fits.getheader(path)
    except (OSError, ValueError) as exc:
        log.warning("cannot read the header of %s: %s", path, exc)
        return {}
    return {
        key: header[key]
        for key in header
        if key and isinstance(header[key], str | int | float | bool)
    }


class DataSet:
    """The files of one directory seen so far, as rows of ``name``, ``path`` and keywords."""

    def __init__(
        self, directory: str | Path | None, pattern: str, on_new: Callable[[Path], None]
    ) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.pattern = pattern
        self.rows: list[dict[str, Any]] = []
        self._seen: set[Path] = set()
        self._on_new = on_new
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def ingest(self, files: Iterable[str | Path] = ()) -> int:
        """Take the given files, or the directory's matching files; returns how many were new."""
        paths = [Path(f) for f in files]
        if not paths and self.directory is not None:
            paths = sorted(self.directory.glob(self.pattern))
        new = 0
        for path in paths:
            path = path.resolve()
            if path in self._seen or not path.is_file():
                continue
            self._seen.add(path)
            self.rows.append({"name": path.name, "path": str(path), **read_header(path)})
            self._on_new(path)
            new += 1
        return new

    def monitor(self, interval: float) -> None:
        """Ingest the directory again every ``interval`` seconds until ``stop``."""

        def watch() -> None:
            while not self._stop.wait(interval):
                self.ingest()

        self._thread = threading.Thread(target=watch, name="corral-data-set", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
