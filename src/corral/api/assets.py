"""The dashboard's files: shipped in the package (``corral/api/ui``), served from memory.

Every file under ``ui/static`` is read once, at import. Their URLs carry a hash of all
their contents (``/ui/static/<version>/app.js``), so a browser may keep them for good
(scripts import each other by relative paths, which stay under the same version) and a new
corral never meets a stale script. The two HTML pages name the files through
``{{static}}``, filled in here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

UI_DIR = Path(__file__).resolve().parent / "ui"
TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
#: versioned files never change: a browser may keep them as long as it likes
CACHE_FOREVER = "private, max-age=31536000, immutable"


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str


def _load(root: Path) -> dict[str, Asset]:
    """Every file under ``root`` of a known type, by its path there: nothing else is ever
    served."""
    return {
        path.relative_to(root).as_posix(): Asset(path.read_bytes(), TYPES[path.suffix])
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.suffix in TYPES
    }


FILES = _load(UI_DIR / "static")
VERSION = hashlib.sha256(
    b"".join(name.encode() + b"\0" + asset.body for name, asset in FILES.items())
).hexdigest()[:12]
#: where the files are served, this version
PREFIX = f"/ui/static/{VERSION}"
#: the log-in page's one file, served without a session
STYLESHEET = f"{PREFIX}/app.css"


def page(name: str) -> str:
    """One of the HTML pages, naming this version's files."""
    return (UI_DIR / name).read_text().replace("{{static}}", PREFIX)


INDEX = page("index.html")
LOGIN = page("login.html")
