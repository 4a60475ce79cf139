"""Dispatcher configuration: a TOML file of engines, with errors that name the key."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest

from corral.agent.logs import DEFAULT_RETENTION
from corral.agent.main import build_parser as build_agent_parser
from corral.config import Config, default_config, load_config, parse_config
from corral.core.ids import EngineId, NodeId
from corral.core.model import Engine
from corral.core.retention import Retention
from corral.drivers.base import NodeSpec, agent_command
from corral.errors import InvalidRequest


def _error(raw: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        parse_config(raw, source="corral.toml")
    assert caught.value.message.startswith("corral.toml: ")
    return caught.value


def _one(**settings: Any) -> dict[str, Any]:
    return {"engines": [{"id": "default", **settings}]}


# -- defaults ----------------------------------------------------------------------------------


def test_no_file_gives_one_default_engine_on_the_local_driver():
    config = load_config(None)
    assert [e.engine_id for e in config.engines] == ["default"]
    assert config.default_engine.driver == "local"
    assert config.default_engine.slots == 2 * (os.cpu_count() or 1)
    assert config.default_engine.maximum_vms == 1


def test_a_file_without_engines_gives_the_defaults():
    assert parse_config({}) == default_config()


def test_an_engine_needs_only_an_id():
    config = parse_config(_one())
    assert config.engines == (Engine(EngineId("default")),)


def test_the_first_engine_is_the_default():
    config = parse_config({"engines": [{"id": "small"}, {"id": "big", "slots": 16}]})
    assert isinstance(config, Config)
    assert config.default_engine.engine_id == "small"
    assert [e.engine_id for e in config.engines] == ["small", "big"]


def test_every_setting_is_read():
    config = parse_config(
        _one(
            driver="local",
            slots=8,
            base_need=2,
            maximum_vms=5,
            labels={"zone": "a"},
            heartbeat_period=0.5,
            heartbeat_warning=2,
            heartbeat_missing=4,
            boot_timeout=60,
            terminate_grace=3,
            run_as="corral",
            allow_root=True,
        )
    )
    e = config.default_engine
    assert (e.run_as, e.allow_root) == ("corral", True)
    assert (e.slots, e.base_need, e.maximum_vms) == (8, 2, 5)
    assert (e.heartbeat_period, e.heartbeat_warning, e.heartbeat_missing) == (0.5, 2.0, 4.0)
    assert (e.boot_timeout, e.terminate_grace) == (60.0, 3.0)
    assert isinstance(e.heartbeat_warning, float)


def test_launch_ahead_defaults_to_twice_the_slots_and_zero_turns_it_off():
    assert parse_config(_one(slots=6)).default_engine.ahead == 12
    assert parse_config(_one(slots=6, launch_ahead=2)).default_engine.ahead == 2
    assert parse_config(_one(slots=6, launch_ahead=0)).default_engine.ahead == 0


def test_log_max_bytes_reaches_the_agents_command_line_when_set():
    spec = NodeSpec(NodeId("n"), parse_config(_one()).default_engine)
    assert "--log-max-bytes" not in agent_command("python3", spec, "h:1", "t", "s")
    limited = NodeSpec(NodeId("n"), parse_config(_one(log_max_bytes=0)).default_engine)
    argv = agent_command("python3", limited, "h:1", "t", "s")
    assert argv[argv.index("--log-max-bytes") + 1] == "0"


def test_log_retention_reaches_the_agent_which_reads_it_as_seconds():
    spec = NodeSpec(NodeId("n"), parse_config(_one()).default_engine)
    argv = agent_command("python3", spec, "h:1", "t", "s")
    assert "--log-retention" not in argv
    assert argv[:3] == ["python3", "-m", "corral.agent"]
    assert build_agent_parser().parse_args(argv[3:]).log_retention == DEFAULT_RETENTION
    kept = NodeSpec(NodeId("n"), parse_config(_one(log_retention=3600)).default_engine)
    argv = agent_command("python3", kept, "h:1", "t", "s")
    assert build_agent_parser().parse_args(argv[3:]).log_retention == 3600.0


def test_labels_become_strings_as_constraints_compare_them():
    labels = parse_config(_one(labels={"zone": 1, "gpu": True, "ssd": False, "ratio": 1.5}))
    assert labels.default_engine.labels == {
        "zone": "1",
        "gpu": "true",
        "ssd": "false",
        "ratio": "1.5",
    }


# -- errors name the key -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"engine": []}, "engine"),
        ({"engines": [], "zz": 1}, "zz"),
        ({"engines": []}, "engines"),
        ({"engines": {"id": "x"}}, "engines"),
        ({"engines": ["x"]}, "engines[0]"),
        (_one(cores=4), "engines[0].cores"),
        ({"engines": [{"slots": 2}]}, "engines[0].id"),
        ({"engines": [{"id": ""}]}, "engines[0].id"),
        ({"engines": [{"id": 3}]}, "engines[0].id"),
        (_one(driver="ec2"), "engines[0].driver"),
        (_one(slots=0), "engines[0].slots"),
        (_one(slots=2.0), "engines[0].slots"),
        (_one(slots=True), "engines[0].slots"),
        (_one(base_need=-1), "engines[0].base_need"),
        (_one(launch_ahead=-1), "engines[0].launch_ahead"),
        (_one(log_max_bytes=-1), "engines[0].log_max_bytes"),
        (_one(log_retention=1.5), "engines[0].log_retention"),
        (_one(log_max_bytes="10M"), "engines[0].log_max_bytes"),
        (_one(maximum_vms="4"), "engines[0].maximum_vms"),
        (_one(base_need=3, maximum_vms=2), "engines[0].base_need"),
        (_one(heartbeat_warning=6, heartbeat_missing=6), "engines[0].heartbeat_warning"),
        (_one(heartbeat_warning=7), "engines[0].heartbeat_warning"),
        (_one(heartbeat_period=0), "engines[0].heartbeat_period"),
        (_one(heartbeat_period=math.nan), "engines[0].heartbeat_period"),
        (_one(boot_timeout=-5), "engines[0].boot_timeout"),
        (_one(boot_timeout=math.nan), "engines[0].boot_timeout"),
        (_one(terminate_grace="10s"), "engines[0].terminate_grace"),
        (_one(terminate_grace=False), "engines[0].terminate_grace"),
        (_one(labels={"zone": {"a": 1}}), "engines[0].labels"),
        (_one(labels={"zones": ["a", "b"]}), "engines[0].labels"),
        (_one(labels="zone=a"), "engines[0].labels"),
        ({"engines": [{"id": "a"}, {"id": "b"}, {"id": "a"}]}, "engines[2].id"),
        ({"engines": [{"id": "a"}, {"id": "b", "slots": 0}]}, "engines[1].slots"),
        (_one(run_as=""), "engines[0].run_as"),
        (_one(run_as=0), "engines[0].run_as"),
        (_one(run_as="two words"), "engines[0].run_as"),
        (_one(run_as="new\nline"), "engines[0].run_as"),
        (_one(allow_root="yes"), "engines[0].allow_root"),
        (_one(allow_root=1), "engines[0].allow_root"),
    ],
)
def test_a_bad_config_is_refused_naming_the_key(raw, field):
    error = _error(raw)
    assert error.field == field
    key = field.rsplit(".", 1)[-1]
    assert key in error.message


def test_an_unknown_engine_setting_lists_the_known_ones():
    assert "expected one of allow_root, base_need, boot_timeout" in _error(_one(cores=4)).message


def test_a_missing_driver_says_which_are_available():
    assert "'ec2' is not available; expected one of local" in _error(_one(driver="ec2")).message


def test_a_duplicate_engine_id_is_named():
    message = _error({"engines": [{"id": "a"}, {"id": "a"}]}).message
    assert "engine id 'a' is declared twice" in message


# -- files -------------------------------------------------------------------------------------


def test_load_config_reads_a_toml_file(tmp_path: Path):
    path = tmp_path / "corral.toml"
    path.write_text(
        "[[engines]]\n"
        'id = "cpu"\n'
        "slots = 2\n"
        "labels = { zone = 1 }\n"
        "\n"
        "[[engines]]\n"
        'id = "gpu"\n'
        "base_need = 0\n"
    )
    config = load_config(path)
    assert [(e.engine_id, e.slots, dict(e.labels)) for e in config.engines] == [
        ("cpu", 2, {"zone": "1"}),
        ("gpu", 4, {}),
    ]


def test_an_error_in_a_file_names_the_file_and_the_key(tmp_path: Path):
    path = tmp_path / "corral.toml"
    path.write_text('[[engines]]\nid = "a"\nslots = 0\n')
    with pytest.raises(InvalidRequest) as caught:
        load_config(path)
    assert caught.value.message.startswith(f"{path}: engines[0].slots")
    assert caught.value.field == "engines[0].slots"


def test_invalid_toml_is_refused_naming_the_file(tmp_path: Path):
    path = tmp_path / "broken.toml"
    path.write_text("[[engines]\nid = 'a'\n")
    with pytest.raises(InvalidRequest, match=r"broken\.toml is not valid TOML") as caught:
        load_config(path)
    assert caught.value.field == "config"


def test_a_file_that_is_not_utf8_is_refused_naming_the_file(tmp_path: Path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('[[engines]]\nid = "zürich"\n'.encode("latin-1"))
    with pytest.raises(InvalidRequest, match=r"latin1\.toml is not valid TOML") as caught:
        load_config(path)
    assert caught.value.field == "config"


def test_a_utf8_file_with_non_ascii_text_is_read_as_utf8(tmp_path: Path):
    path = tmp_path / "corral.toml"
    path.write_bytes('[[engines]]\nid = "zürich"\n'.encode())
    assert load_config(path).default_engine.engine_id == "zürich"


def test_a_missing_file_is_refused_naming_the_file(tmp_path: Path):
    path = tmp_path / "nope.toml"
    with pytest.raises(InvalidRequest, match=r"cannot read config .*nope\.toml") as caught:
        load_config(path)
    assert caught.value.field == "config"


# -- instance types and driver options ----------------------------------------------------------

SMALL = {"name": "small", "provider_type": "t3.small", "vcpus": 2, "ram": 2048, "price": 0.02}
LARGE = {"name": "large", "vcpus": 8, "ram": 16384, "gpus": 1, "price": 0.5}


def test_instance_types_are_read_and_an_engine_lists_them_cheapest_first():
    raw = {"instance_types": [LARGE, SMALL], **_one(instance_types=["large", "small"])}
    (engine,) = parse_config(raw).engines
    assert [t.name for t in engine.instance_types] == ["small", "large"]
    large = engine.instance_type("large")
    assert large is not None
    assert (large.provider_type, large.vcpus, large.ram, large.gpus) == ("large", 8.0, 16384, 1)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"instance_types": [{**SMALL, "cores": 2}]}, "instance_types[0].cores"),
        ({"instance_types": [{**SMALL, "vcpus": 0}]}, "instance_types[0].vcpus"),
        ({"instance_types": [{**SMALL, "gpus": -1}]}, "instance_types[0].gpus"),
        ({"instance_types": [SMALL, SMALL]}, "instance_types[1].name"),
        ({"instance_types": [{**SMALL, "price": -1}]}, "instance_types[0].price"),
        (_one(instance_types=["huge"]), "engines[0].instance_types"),
        (
            _one(driver="fake", driver_options={"crash_rate": 2}),
            "engines[0].driver_options.crash_rate",
        ),
        (_one(driver="fake", driver_options={"oops": 1}), "engines[0].driver_options.oops"),
        (_one(driver="ssh", driver_options={"user": "u"}), "engines[0].driver_options.hosts"),
        (_one(driver="slurm", driver_options={}), "engines[0].driver_options.state_dir"),
        (
            _one(driver="libcloud", driver_options={"provider": "EC2"}),
            "engines[0].driver_options.size",
        ),
        (_one(driver_options={"anything": 1}), "engines[0].driver_options.anything"),
    ],
)
def test_bad_instance_types_and_driver_options_are_refused_naming_the_key(raw, field):
    assert _error(raw).field == field


def test_the_store_reserve_is_read_from_the_top_level_and_defaults_to_64_mib():
    assert parse_config({}).store_reserve_mb == 64
    assert parse_config({"store_reserve_mb": 0}).store_reserve_mb == 0
    engines = [{"id": "e", "driver": "local"}]
    assert parse_config({"store_reserve_mb": 8, "engines": engines}).store_reserve_mb == 8


@pytest.mark.parametrize("bad", [-1, 1.5, "64", True])
def test_a_store_reserve_that_is_not_a_whole_number_of_mib_is_refused(bad: Any):
    with pytest.raises(InvalidRequest) as caught:
        parse_config({"store_reserve_mb": bad})
    assert caught.value.field == "store_reserve_mb"


# -- the dispatcher's own settings ---------------------------------------------------------


def test_the_dispatcher_table_sets_the_store_and_the_lease():
    config = parse_config({"dispatcher": {"store": "postgresql://db/c", "lease_duration": 2}})
    assert (config.store, config.lease_duration) == ("postgresql://db/c", 2.0)
    assert config.engines == default_config().engines
    assert (default_config().store, default_config().lease_duration) == (None, 3.0)
    with_engines = parse_config({**_one(), "dispatcher": {"lease_duration": 1.5}})
    assert with_engines.lease_duration == 1.5


def test_the_dispatcher_table_sets_how_long_and_how_many_ended_processes_are_kept():
    assert default_config().retention == Retention(86_400.0, 100_000)
    config = parse_config({"dispatcher": {"ended_retention": 3600, "ended_max": 0}})
    assert config.retention == Retention(max_age=3600.0, max_count=0)
    assert config.retention.bounded
    unbounded = parse_config({**_one(), "dispatcher": {"ended_retention": 0, "ended_max": 0}})
    assert not unbounded.retention.bounded


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"dispatcher": {"ended_retention": -1}}, "dispatcher.ended_retention"),
        ({"dispatcher": {"ended_retention": "1d"}}, "dispatcher.ended_retention"),
        ({"dispatcher": {"ended_max": 1.5}}, "dispatcher.ended_max"),
        ({"dispatcher": {"ended_max": True}}, "dispatcher.ended_max"),
        ({"dispatcher": {"store": ""}}, "dispatcher.store"),
        ({"dispatcher": {"lease_duration": 0}}, "dispatcher.lease_duration"),
        ({"dispatcher": {"lease_duration": "3"}}, "dispatcher.lease_duration"),
        ({"dispatcher": {"leader": True}}, "dispatcher.leader"),
        ({"dispatcher": 3}, "dispatcher"),
        (_one(driver_options={"nodes_dir": 3}), "engines[0].driver_options.nodes_dir"),
    ],
)
def test_bad_dispatcher_settings_are_refused_naming_the_key(raw, field):
    assert _error(raw).field == field


def test_the_local_driver_may_keep_its_nodes_elsewhere():
    config = parse_config(_one(driver_options={"nodes_dir": "/srv/corral/nodes"}))
    assert config.default_engine.driver_options == {"nodes_dir": "/srv/corral/nodes"}
