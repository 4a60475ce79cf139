"""The libcloud driver against Libcloud's own dummy provider, and the cloud-init script it
gives each instance, run for real: the agent it starts joins a dispatcher."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from libcloud.compute.drivers.dummy import DummyNodeDriver

from corral.core.ids import NodeId
from corral.drivers.base import (
    TAG_ENGINE,
    TAG_NODE,
    TAG_POOL,
    CapacityUnavailable,
    CloudError,
    NodeSpec,
    QuotaExceeded,
    RateLimited,
    tags_from_instance_name,
)
from corral.drivers.libcloud import (
    LibcloudDriver,
    LibcloudOptions,
    agent_user_data,
    classify,
)
from corral.secretfile import node_token
from corral.testing import engine
from corral.testing.dispatcher import open_test_dispatcher
from corral.testing.serve import wait_until

pytestmark = pytest.mark.timeout(60)

OPTIONS = LibcloudOptions(provider="DUMMY", size="1", image="1")


def test_create_list_and_destroy_on_the_dummy_provider() -> None:
    dummy = DummyNodeDriver(0)  # it starts with two nodes of its own
    driver = LibcloudDriver(OPTIONS, "127.0.0.1:9", "token", provider=dummy)
    tags = {TAG_POOL: "abc123", TAG_NODE: "default-1a2b", TAG_ENGINE: "default"}

    async def scenario() -> None:
        instance = await driver.create(NodeSpec(NodeId("default-1a2b"), engine()), tags)
        listed = await driver.list()
        # only ours: the provider's other nodes are never claimed, so never destroyed
        assert [(i.instance_id, i.tags) for i in listed] == [(instance.instance_id, tags)]
        assert len(dummy.list_nodes()) == 3
        await driver.destroy(instance.instance_id)
        assert await driver.list() == []
        assert len(dummy.list_nodes()) == 2
        await driver.destroy("no-such-instance")  # unknown ids are not an error

    asyncio.run(scenario())


def test_an_unknown_size_is_a_clear_cloud_error() -> None:
    options = LibcloudOptions(provider="DUMMY", size="huge", image="1")
    driver = LibcloudDriver(options, "127.0.0.1:9", "token", provider=DummyNodeDriver(0))
    with pytest.raises(CloudError) as refused:
        asyncio.run(driver.create(NodeSpec(NodeId("n-1"), engine()), {}))
    assert "size 'huge'" in str(refused.value)


def test_instance_names_carry_the_pool_tags_for_providers_without_metadata() -> None:
    assert tags_from_instance_name("corral-abc123-gpu-1a2b") == {
        TAG_POOL: "abc123",
        TAG_NODE: "gpu-1a2b",
        TAG_ENGINE: "gpu",
    }
    assert tags_from_instance_name("dummy-1") is None
    assert tags_from_instance_name("corral-NOTHEX-x") is None


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (Exception("Request was throttled"), RateLimited),
        (Exception("InstanceLimitExceeded: quota"), QuotaExceeded),
        (Exception("InsufficientInstanceCapacity"), CapacityUnavailable),
        (Exception("something else"), CloudError),
    ],
)
def test_provider_errors_are_classified_by_what_to_do(error: Exception, kind: type) -> None:
    assert type(classify(error)) is kind


def test_the_user_data_script_starts_an_agent_that_joins(tmp_path: Path) -> None:
    config = """
[[engines]]
id = "cloud"
allow_root = true  # the tests may run as root
slots = 2
base_need = 0
maximum_vms = 2
heartbeat_period = 0.2
heartbeat_warning = 1.0
heartbeat_missing = 2.0
"""
    with open_test_dispatcher(config, home=tmp_path / "home") as corral:
        host, port = corral.runtime.agent_address or ("", 0)
        secret = (corral.home / "agent_token").read_text().strip()
        token = node_token(secret, "cloud-feed")
        spec = NodeSpec(NodeId("cloud-feed"), engine("cloud", slots=2))
        script = agent_user_data(
            spec, f"{host}:{port}", token, sys.executable, str(tmp_path / "agent")
        )
        subprocess.run(["sh", "-c", script], check=True, timeout=10)
        try:
            node = wait_until(
                lambda: [n for n in corral.client.list_nodes() if n["connected"]],
                "the agent to join",
                20,
            )[0]
            assert node["node_id"] == "cloud-feed"
            assert node["slots"] == 2
            assert (tmp_path / "agent" / "token").stat().st_mode & 0o077 == 0
        finally:
            # retiring it sends the agent a Shutdown: it stops by itself
            corral.client.kill_node("cloud-feed")
            wait_until(lambda: not _agent_running("cloud-feed"), "the agent to stop", 20)


def _agent_running(node_id: str) -> bool:
    found = subprocess.run(["pgrep", "-f", f"node-id {node_id}"], capture_output=True)
    return found.returncode == 0
