"""Dispatcher configuration: engines from a TOML file, validated with errors naming the key.

::

    [[engines]]
    id = "default"
    driver = "local"
    slots = 4
    base_need = 1
    maximum_vms = 4
    labels = { zone = "a" }

The first engine is the default one. With no file, one ``default`` engine on the local
driver with ``2 × cores`` slots is used; when the dispatcher runs as root, its processes
run as ``nobody`` (processes never run as root unless an engine says ``run_as = "root"``
or ``allow_root = true``).

The dispatcher's own settings (the command line's options win)::

    [dispatcher]
    store = "postgresql://corral@db.example/corral"
    lease_duration = 3.0   # seconds; on a shared (PostgreSQL) store, see docs/operations.md
    ended_retention = 86400  # seconds an ended process is kept; 0: no limit
    ended_max = 100000       # ended processes kept at most, the oldest go first; 0: no limit
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from corral.core.ids import EngineId
from corral.core.model import Engine, InstanceType
from corral.core.retention import Retention
from corral.drivers.fake import FakeFaults
from corral.drivers.libcloud import libcloud_options_errors
from corral.drivers.slurm import slurm_options_errors
from corral.drivers.ssh import ssh_options_errors
from corral.errors import InvalidRequest

DRIVERS = ("local", "fake", "ssh", "slurm", "libcloud")


#: seconds a dispatcher's lease lasts unrenewed, unless configured
LEASE_DURATION = 3.0
#: free space kept on the store's disk for the work already accepted (see StoreFull)
STORE_RESERVE_MB = 64


@dataclass(frozen=True, slots=True)
class Config:
    engines: tuple[Engine, ...]
    store_reserve_mb: int = STORE_RESERVE_MB
    #: the store's URL (``corral serve --store`` wins); None: SQLite in the home directory
    store: str | None = None
    #: how long the active dispatcher's lease lasts unrenewed, on a PostgreSQL store
    lease_duration: float = LEASE_DURATION
    #: how long, and how many, ended processes are kept
    retention: Retention = field(default_factory=Retention)

    @property
    def default_engine(self) -> Engine:
        return self.engines[0]


#: who the embedded default's processes run as when the dispatcher (so its local agents)
#: runs as root
DEFAULT_ROOT_RUN_AS = "nobody"


def default_config() -> Config:
    slots = 2 * (os.cpu_count() or 1)
    run_as = DEFAULT_ROOT_RUN_AS if os.geteuid() == 0 else None
    return Config((Engine(EngineId("default"), slots=slots, maximum_vms=1, run_as=run_as),))


def load_config(path: Path | None) -> Config:
    """Read ``path``; None gives the embedded defaults."""
    if path is None:
        return default_config()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidRequest(f"cannot read config {path}: {exc.strerror}", field="config") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"{path} is not valid TOML: {exc}", field="config") from exc
    return parse_config(raw, source=str(path))


def parse_config(raw: dict[str, Any], source: str = "config") -> Config:
    unknown = set(raw) - {"engines", "instance_types", "store_reserve_mb", "dispatcher"}
    if unknown:
        key = sorted(unknown)[0]
        raise InvalidRequest(
            f"{source}: unknown key {key!r}; expected 'engines', 'instance_types',"
            " 'store_reserve_mb' or 'dispatcher'",
            field=key,
        )
    reserve = raw.get("store_reserve_mb", STORE_RESERVE_MB)
    if not isinstance(reserve, int) or isinstance(reserve, bool) or reserve < 0:
        raise InvalidRequest(
            f"{source}: store_reserve_mb must be a whole number of MiB, 0 or more",
            field="store_reserve_mb",
        )
    dispatcher = _dispatcher(raw.get("dispatcher", {}), source)
    types = _instance_types(raw.get("instance_types", []), source)
    items = raw.get("engines")
    if items is None:
        return replace(default_config(), store_reserve_mb=reserve, **dispatcher)
    if not isinstance(items, list) or not items:
        raise InvalidRequest(
            f"{source}: 'engines' must be a non-empty array of tables", field="engines"
        )
    engines = [_engine(item, f"engines[{i}]", source, types) for i, item in enumerate(items)]
    seen: set[str] = set()
    for i, engine in enumerate(engines):
        if engine.engine_id in seen:
            raise InvalidRequest(
                f"{source}: engine id {engine.engine_id!r} is declared twice",
                field=f"engines[{i}].id",
            )
        seen.add(engine.engine_id)
    return Config(tuple(engines), store_reserve_mb=reserve, **dispatcher)


def _dispatcher(item: Any, source: str) -> dict[str, Any]:
    """``[dispatcher]``: ``store`` (a URL), ``lease_duration`` (seconds), and the retention
    of ended processes: ``ended_retention`` (seconds) and ``ended_max`` (a count)."""
    known = {"store", "lease_duration", "ended_retention", "ended_max"}
    _check_table(item, "dispatcher", source, known, "a dispatcher setting")
    values: dict[str, Any] = {}
    if "store" in item:
        store = item["store"]
        if not isinstance(store, str) or not store:
            raise InvalidRequest(
                f"{source}: dispatcher.store must be a store URL", field="dispatcher.store"
            )
        values["store"] = store
    if "lease_duration" in item:
        duration = item["lease_duration"]
        if isinstance(duration, bool) or not isinstance(duration, int | float) or not duration > 0:
            raise InvalidRequest(
                f"{source}: dispatcher.lease_duration must be a number of seconds > 0",
                field="dispatcher.lease_duration",
            )
        values["lease_duration"] = float(duration)
    retention = Retention()
    if "ended_retention" in item:
        age = item["ended_retention"]
        if isinstance(age, bool) or not isinstance(age, int | float) or not age >= 0:
            raise InvalidRequest(
                f"{source}: dispatcher.ended_retention must be a number of seconds, 0 or more"
                " (0: ended processes are kept however old)",
                field="dispatcher.ended_retention",
            )
        retention = replace(retention, max_age=float(age))
    if "ended_max" in item:
        count = item["ended_max"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise InvalidRequest(
                f"{source}: dispatcher.ended_max must be a whole number, 0 or more"
                " (0: no limit on how many ended processes are kept)",
                field="dispatcher.ended_max",
            )
        retention = replace(retention, max_count=count)
    if retention != Retention():
        values["retention"] = retention
    return values


_INTS = (
    "slots",
    "base_need",
    "maximum_vms",
    "spare_slots",
    "max_dispatch_attempts",
    "launch_ahead",
    "log_max_bytes",
    "log_retention",
)
_FLOATS = (
    "heartbeat_period",
    "heartbeat_warning",
    "heartbeat_missing",
    "boot_timeout",
    "terminate_grace",
    "idle_timeout",
    "stop_after_disconnect",
)


_TYPE_KEYS = {"name", "provider_type", "vcpus", "ram", "gpus", "price", "preemptible"}


def _check_table(item: Any, where: str, source: str, known: set[str], what: str) -> None:
    """``item`` is a table whose keys are all ``known``; else an error naming the key."""
    if not isinstance(item, dict):
        raise InvalidRequest(f"{source}: {where} must be a table", field=where)
    for key in item:
        if key not in known:
            raise InvalidRequest(
                f"{source}: {where}.{key} is not {what}; expected one of "
                f"{', '.join(sorted(known))}",
                field=f"{where}.{key}",
            )


def _instance_types(items: Any, source: str) -> dict[str, InstanceType]:
    """``[[instance_types]]``: name, provider_type, vcpus, ram (MiB), gpus, price,
    preemptible."""
    if not isinstance(items, list):
        raise InvalidRequest(
            f"{source}: 'instance_types' must be an array of tables", field="instance_types"
        )
    types: dict[str, InstanceType] = {}
    for i, item in enumerate(items):
        where = f"instance_types[{i}]"
        _check_table(item, where, source, _TYPE_KEYS, "an instance type setting")
        name = item.get("name")
        if not isinstance(name, str) or not name or name in types:
            raise InvalidRequest(
                f"{source}: {where}.name must be a unique non-empty string", field=f"{where}.name"
            )
        vcpus = _positive(item.get("vcpus"), f"{where}.vcpus", source)
        ram = _positive(item.get("ram"), f"{where}.ram", source)
        gpus = item.get("gpus", 0)
        if type(gpus) is not int or gpus < 0:
            raise InvalidRequest(
                f"{source}: {where}.gpus must be a whole number ≥ 0", field=f"{where}.gpus"
            )
        price = item.get("price", 0.0)
        if isinstance(price, bool) or not isinstance(price, int | float) or not price >= 0:
            raise InvalidRequest(
                f"{source}: {where}.price must be a number ≥ 0", field=f"{where}.price"
            )
        types[name] = InstanceType(
            name=name,
            provider_type=str(item.get("provider_type", name)),
            vcpus=vcpus,
            ram=int(ram),
            gpus=gpus,
            price=float(price),
            preemptible=bool(item.get("preemptible", False)),
        )
    return types


def _positive(value: Any, key: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidRequest(f"{source}: {key} must be a number > 0", field=key)
    return float(value)


def _engine_types(
    names: Any, types: dict[str, InstanceType], where: str, source: str
) -> tuple[InstanceType, ...]:
    key = f"{where}.instance_types"
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InvalidRequest(f"{source}: {key} must be a list of type names", field=key)
    for name in names:
        if name not in types:
            raise InvalidRequest(
                f"{source}: {key} names {name!r}, which no [[instance_types]] declares",
                field=key,
            )
    return tuple(sorted((types[n] for n in names), key=lambda t: (t.price, t.name)))


def _engine(item: Any, where: str, source: str, types: dict[str, InstanceType]) -> Engine:
    known = {f.name for f in fields(Engine)} - {"engine_id"} | {"id"}
    _check_table(item, where, source, known, "an engine setting")
    engine_id = item.get("id")
    if not isinstance(engine_id, str) or not engine_id:
        raise InvalidRequest(
            f"{source}: {where}.id must be a non-empty string", field=f"{where}.id"
        )
    values: dict[str, Any] = {"engine_id": EngineId(engine_id)}
    driver = item.get("driver", "local")
    if driver not in DRIVERS:
        raise InvalidRequest(
            f"{source}: {where}.driver {driver!r} is not available; expected one of "
            f"{', '.join(DRIVERS)}",
            field=f"{where}.driver",
        )
    values["driver"] = driver
    options = item.get("driver_options", {})
    values["driver_options"] = _driver_options(driver, options, where, source)
    values.update(_numbers(item, where, source))
    values["labels"] = _labels(item.get("labels", {}), where, source)
    values.update(_identity(item, where, source))
    values["instance_types"] = _engine_types(item.get("instance_types", []), types, where, source)
    engine = Engine(**values)
    if engine.base_need > engine.maximum_vms:
        raise InvalidRequest(
            f"{source}: {where}.base_need ({engine.base_need}) exceeds maximum_vms "
            f"({engine.maximum_vms})",
            field=f"{where}.base_need",
        )
    if not engine.heartbeat_warning < engine.heartbeat_missing:
        raise InvalidRequest(
            f"{source}: {where}.heartbeat_warning must be below heartbeat_missing",
            field=f"{where}.heartbeat_warning",
        )
    return engine


def _driver_options(driver: str, raw: Any, where: str, source: str) -> dict[str, Any]:
    """The fake driver takes its faults (``FakeFaults``), the ssh driver its hosts and
    keys (``SSHOptions``); the local driver only where its nodes live (``nodes_dir``)."""
    key = f"{where}.driver_options"
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{source}: {key} must be a table", field=key)
    if driver == "local":
        return _local_options(raw, key, source)
    checks = {
        "ssh": ssh_options_errors,
        "slurm": slurm_options_errors,
        "libcloud": libcloud_options_errors,
    }
    if driver in checks:
        errors = checks[driver](raw)
        for name, problem in errors:
            raise InvalidRequest(f"{source}: {key}.{name} {problem}", field=f"{key}.{name}")
        return dict(raw)
    known = {f.name: f for f in fields(FakeFaults)} if driver == "fake" else {}
    options: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in known:
            expected = ", ".join(sorted(known)) or "nothing for this driver"
            raise InvalidRequest(
                f"{source}: {key}.{name} is not a {driver} driver option; expected {expected}",
                field=f"{key}.{name}",
            )
        number = not isinstance(value, bool) and isinstance(value, int | float)
        rate = name.endswith("_rate")
        if name == "seed":
            wrong = type(value) is not int
            expected = "an integer"
        else:
            wrong = not number or not value >= 0 or (rate and value > 1)
            expected = "a probability between 0 and 1" if rate else "a number ≥ 0"
        if wrong:
            raise InvalidRequest(
                f"{source}: {key}.{name} must be {expected}", field=f"{key}.{name}"
            )
        options[name] = value
    return options


def _local_options(raw: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    """``nodes_dir``: the nodes' directory (default ``HOME/nodes``); dispatchers of one
    store on one host share it, so a standby finds the agents the active one started."""
    for name, value in raw.items():
        if name != "nodes_dir":
            raise InvalidRequest(
                f"{source}: {key}.{name} is not a local driver option; expected nodes_dir",
                field=f"{key}.{name}",
            )
        if not isinstance(value, str) or not value:
            raise InvalidRequest(
                f"{source}: {key}.nodes_dir must be a directory's path", field=f"{key}.nodes_dir"
            )
    return dict(raw)


def _numbers(item: dict[str, Any], where: str, source: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key in _INTS:
        if key in item:
            value = item[key]
            least = 1 if key == "slots" else 0
            if type(value) is not int or value < least:
                raise InvalidRequest(
                    f"{source}: {where}.{key} must be a whole number ≥ {least}",
                    field=f"{where}.{key}",
                )
            values[key] = value
    for key in _FLOATS:
        if key in item:
            value = item[key]
            # "not value > 0" also refuses NaN, which TOML allows
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise InvalidRequest(
                    f"{source}: {where}.{key} must be a number > 0", field=f"{where}.{key}"
                )
            values[key] = float(value)
    return values


def _identity(item: dict[str, Any], where: str, source: str) -> dict[str, Any]:
    """``run_as``: a user name or uid; ``allow_root``: a boolean."""
    values: dict[str, Any] = {}
    if "run_as" in item:
        user = item["run_as"]
        if not isinstance(user, str) or not user or not user.isprintable() or " " in user:
            raise InvalidRequest(
                f"{source}: {where}.run_as must be a user name or uid", field=f"{where}.run_as"
            )
        values["run_as"] = user
    if "allow_root" in item:
        if not isinstance(item["allow_root"], bool):
            raise InvalidRequest(
                f"{source}: {where}.allow_root must be true or false",
                field=f"{where}.allow_root",
            )
        values["allow_root"] = item["allow_root"]
    return values


def refusing_root(config: Config) -> list[str]:
    """The engines whose processes a root dispatcher's local agents would refuse to run."""
    if os.geteuid() != 0:
        return []
    return [
        e.engine_id
        for e in config.engines
        if e.driver == "local" and e.run_as is None and not e.allow_root
    ]


def _labels(labels: Any, where: str, source: str) -> dict[str, str]:
    if not isinstance(labels, dict) or any(isinstance(v, dict | list) for v in labels.values()):
        raise InvalidRequest(
            f"{source}: {where}.labels must be a table of plain values", field=f"{where}.labels"
        )
    return {str(k): _label_text(v) for k, v in labels.items()}


def _label_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
