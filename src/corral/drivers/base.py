"""The driver contract the node pool consumes, and the cloud errors a driver raises.

A driver's errors say what the caller should do (Arvados' error interfaces)::

    CloudError               something else went wrong: retry later
     ├── RateLimited         too many calls: nothing before ``retry_at``
     ├── QuotaExceeded       the account may not have more instances: stop creating
     └── CapacityUnavailable the provider has none to give (of this type, or at all)
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from corral.core.ids import NodeId
from corral.core.model import Engine, InstanceType
from corral.wire.messages import ProcessReport

#: tag keys every instance carries, so a restarted dispatcher can find and re-adopt it
TAG_POOL = "corral-pool"
TAG_NODE = "corral-node"
TAG_ENGINE = "corral-engine"
#: what the node was created to do (run); hold and drain are kept in the store
TAG_IDLE_BEHAVIOR = "corral-idle-behavior"


_INSTANCE_NAME = re.compile(r"^corral-(?P<pool>[0-9a-f]+)-(?P<node>.+)$")


def instance_name(pool: str, node_id: str) -> str:
    """``corral-<pool>-<node id>``: for providers that keep no tags, the name carries them."""
    return f"corral-{pool}-{node_id}"


def tags_from_instance_name(name: str) -> dict[str, str] | None:
    """The tags an :func:`instance_name` stands for; None for any other name."""
    found = _INSTANCE_NAME.match(name)
    if found is None:
        return None
    node = found["node"]
    # node ids are "<engine>-<suffix>"
    return {TAG_POOL: found["pool"], TAG_NODE: node, TAG_ENGINE: node.rpartition("-")[0]}


#: beside an agent's token: the dispatcher certificate it trusts, when the agent port is TLS
CERTIFICATE_NAME = "dispatcher.pem"


def agent_command(
    python: str,
    spec: NodeSpec,
    dispatcher: str,
    token_file: str,
    state_dir: str,
    *,
    tls: bool = False,
) -> list[str]:
    """The command line that starts the agent of ``spec``'s node, wherever it runs; with
    ``tls``, it dials over TLS, trusting the certificate in ``state_dir``'s
    :data:`CERTIFICATE_NAME`."""
    engine = spec.engine
    argv = [
        python, "-m", "corral.agent",
        "--dispatcher", dispatcher,
        "--token-file", token_file,
        "--node-id", spec.node_id,
        "--engine", engine.engine_id,
        "--slots", str(engine.slots),
        "--state-dir", state_dir,
        "--heartbeat-period", str(engine.heartbeat_period),
    ]  # fmt: skip
    if engine.stop_after_disconnect is not None:
        # The agent gives up a silent link after the silence that makes the dispatcher
        # call its node disconnected, and stops its processes as the dispatcher expects
        # (``core.disconnect.fence`` counts on these three numbers).
        argv += [
            "--stop-after-disconnect", str(engine.stop_after_disconnect),
            "--stop-grace", str(engine.terminate_grace),
            "--link-timeout", str(engine.heartbeat_missing),
        ]  # fmt: skip
    for key, value in engine.labels.items():
        argv += ["--label", f"{key}={value}"]
    if engine.run_as is not None:
        argv += ["--run-as", engine.run_as]
    if engine.allow_root:
        argv.append("--allow-root")
    if engine.log_max_bytes is not None:
        argv += ["--log-max-bytes", str(engine.log_max_bytes)]
    if engine.log_retention is not None:
        argv += ["--log-retention", str(engine.log_retention)]
    if tls:
        argv += ["--tls-ca", f"{state_dir}/{CERTIFICATE_NAME}"]
    return argv


def write_certificate_lines(state_dir: str, certificate: str | None) -> list[str]:
    """Shell lines that leave ``certificate`` where :func:`agent_command` points the agent
    (none without one)."""
    if certificate is None:
        return []
    target = shlex.quote(f"{state_dir}/{CERTIFICATE_NAME}")
    return [f"printf '%s' {shlex.quote(certificate)} > {target}"]


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """What to boot: a node of ``engine`` that will call itself ``node_id``."""

    node_id: NodeId
    engine: Engine
    #: the kind of machine, for engines that have instance types
    instance_type: InstanceType | None = None


@dataclass(frozen=True, slots=True)
class Instance:
    instance_id: str
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def node_id(self) -> NodeId | None:
        value = self.tags.get(TAG_NODE)
        return NodeId(value) if value else None


class Driver(Protocol):
    async def create(self, spec: NodeSpec, tags: Mapping[str, str]) -> Instance:
        """Boot an instance whose agent will join as ``spec.node_id``."""
        ...

    async def list(self) -> list[Instance]:
        """Every instance that exists now, with its tags."""
        ...

    async def destroy(self, instance_id: str) -> None:
        """Make the instance and everything it runs go away; unknown ids are not an error."""
        ...

    async def last_reports(self, instance_id: str) -> Sequence[ProcessReport] | None:
        """Of a lost instance, before :meth:`destroy`: the rounds (upid, round) its agent had
        started, as the instance itself tells (its agent's reports of them may have been
        lost with it); None when the driver cannot tell."""
        ...


class CloudError(Exception):
    """A driver call failed for a reason not classified below; it may be retried."""


class RateLimited(CloudError):
    """The provider throttles calls: make none before ``retry_at`` (wall-clock time)."""

    def __init__(self, message: str, retry_at: float) -> None:
        super().__init__(message)
        self.retry_at = retry_at


class QuotaExceeded(CloudError):
    """The account may not have more instances: create none until one goes away."""


class CapacityUnavailable(CloudError):
    """The provider has no capacity: for this instance type only, or for any."""

    def __init__(self, message: str, *, instance_type_only: bool = True) -> None:
        super().__init__(message)
        self.instance_type_only = instance_type_only
