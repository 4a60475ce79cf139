"""The framework's configuration: the DRP framework's keys, in an INI file (``config.cfg``).

Keys may sit in ``[DEFAULT]`` or in any section; unknown keys are kept for the pipeline's own
use (``config.extra``, or as attributes). A wrong value raises ``InvalidRequest`` naming the
key. The queue's auth code is never a default constant: when none is given, the first process
that starts a queue server makes a random one and keeps it in ``state_dir`` for the others.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from corral.errors import InvalidRequest

_NONE = ("", "none", "null")


def _default_state_dir() -> str:
    home = os.environ.get("CORRAL_HOME") or os.path.join(os.path.expanduser("~"), ".corral")
    return os.path.join(home, "pipelines")


@dataclass
class FrameworkConfig:
    want_multiprocessing: bool = False
    #: seconds a worker waits on the shared queue before it counts as empty
    event_timeout: float = 1.0
    #: the event appended when no event comes (None: stop, unless waiting or continuous)
    no_event_event: str | None = None
    no_event_wait_time: float = 1.0
    default_ingestion_event: str = "next_file"
    file_type: str = "*.fits"
    output_directory: str = "output"
    monitor_interval: float = 30.0
    queue_manager_hostname: str = "127.0.0.1"
    queue_manager_portnr: int = 50101
    queue_manager_auth_code: str | None = None
    #: a PEM certificate: the shared queue speaks TLS, its clients trusting exactly this
    #: certificate, and a framework process that hosts the queue serving it
    queue_manager_certificate: str | None = None
    #: the private key of ``queue_manager_certificate`` (PEM), for the process that hosts
    #: the queue, unless the certificate's file holds it
    queue_manager_key: str | None = None
    #: seconds a dead worker's event waits before another worker gets it
    visibility_timeout: float = 30.0
    #: the shared queue's name (default: the pipeline class's name)
    queue_name: str | None = None
    #: where a queue server started by a framework keeps its store and its secret
    state_dir: str = field(default_factory=_default_state_dir)
    #: the queue's store (default: a SQLite file in state_dir; postgresql://… at scale)
    queue_store: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        extra = self.__dict__.get("extra", {})
        if name in extra:
            return extra[name]
        raise AttributeError(f"the configuration has no key {name!r}")

    @classmethod
    def read(cls, path: str | os.PathLike[str] | None) -> FrameworkConfig:
        if path is None:
            return cls()
        parser = configparser.ConfigParser(interpolation=None)
        try:
            with open(path, encoding="utf-8") as handle:
                parser.read_file(handle)
        except (OSError, configparser.Error) as exc:
            raise InvalidRequest(f"cannot read the configuration {path}: {exc}") from None
        values: dict[str, str] = dict(parser.defaults())
        for section in parser.sections():
            values.update(parser.items(section, raw=True))
        return cls.from_values(values)

    @classmethod
    def from_values(cls, values: dict[str, str]) -> FrameworkConfig:
        known = {f.name: f for f in fields(cls) if f.name != "extra"}
        settings: dict[str, Any] = {}
        extra: dict[str, str] = {}
        for key, text in values.items():
            spec = known.get(key)
            if spec is None:
                extra[key] = _strip(text)
                continue
            settings[key] = _parse(key, _strip(text), spec.type)
        return cls(**settings, extra=extra)

    def secret_file(self) -> Path:
        return Path(self.state_dir).expanduser() / "queue_secret"


def _strip(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _parse(key: str, text: str, kind: Any) -> Any:
    optional = "None" in str(kind)
    if optional and text.lower() in _NONE:
        return None
    try:
        if "bool" in str(kind):
            if text.lower() in ("true", "yes", "1", "on"):
                return True
            if text.lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError("expected true or false")
        if "float" in str(kind):
            return float(text)
        if "int" in str(kind):
            return int(text)
    except ValueError as exc:
        raise InvalidRequest(f"configuration key {key}: {text!r}: {exc}", field=key) from None
    return text
