"""Test hosts in network namespaces, whose links a fault test cuts and heals.

:func:`open_network` builds a bridge in the root namespace (the dispatcher's side) and, per
:meth:`Network.add_host`, a network namespace joined to it by a veth pair, so a process run
there (:meth:`Host.popen`) reaches the dispatcher only through that link.
:meth:`Host.cut` takes the link down (open connections stop hearing each other, new ones
time out); :meth:`Host.heal` brings it back. :class:`NamespaceAgent` runs a node agent in a
host with the command line the drivers use (``drivers.base.agent_command``).

Needs root and ``ip`` (iproute2). Names carry a random suffix and addresses come from a
documentation range (198.51.100.0/24, in /28 blocks no interface holds yet), so parallel
runs do not collide. Closing removes everything made, even after a failure.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from corral.agent.launcher import kill_orphans
from corral.agent.pidfiles import StateDirBusy, remove_runtime_dirs
from corral.core.ids import NodeId
from corral.core.model import Engine
from corral.drivers.base import NodeSpec, agent_command
from corral.secretfile import node_token, write_secret

#: the documentation range test hosts take their addresses from
RANGE = ipaddress.IPv4Network("198.51.100.0/24")
_BLOCK = 28


def unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    return None


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    """Run ``ip ARGS`` (inside ``netns`` if given); its output."""
    argv = ["ip", *args] if netns is None else ["ip", "netns", "exec", netns, "ip", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def _free_block() -> ipaddress.IPv4Network:
    """A /28 of :data:`RANGE` that no interface of this machine has an address in."""
    taken: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for line in ip("-4", "-o", "addr", "show").splitlines():
        words = line.split()
        if "inet" in words:
            taken.add(ipaddress.ip_interface(words[words.index("inet") + 1]).ip)
    blocks = list(RANGE.subnets(new_prefix=_BLOCK))
    start = secrets.randbelow(len(blocks))
    for block in blocks[start:] + blocks[:start]:
        if not any(address in block for address in taken):
            return block
    raise RuntimeError(f"every /{_BLOCK} of {RANGE} is in use")


@dataclass
class Host:
    """A network namespace joined to the bridge by a veth pair."""

    netns: str
    #: the veth end on the bridge, in the root namespace: taking it down cuts the host off
    link: str
    address: str

    def cut(self) -> None:
        ip("link", "set", self.link, "down")

    def heal(self) -> None:
        ip("link", "set", self.link, "up")

    def popen(self, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside the host, in a session of its own, output into ``log``.

        ``ip netns exec`` execs the command, so the pid is the command's own.
        """
        with log.open("ab") as out:
            return subprocess.Popen(
                ["ip", "netns", "exec", self.netns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )


@dataclass
class Network:
    """A bridge in the root namespace holding :attr:`address`, and hosts behind it."""

    suffix: str
    block: ipaddress.IPv4Network
    bridge: str
    hosts: list[Host] = field(default_factory=list)

    @property
    def address(self) -> str:
        """The root namespace's address on the bridge: what the hosts dial."""
        return str(self.block[1])

    def add_host(self) -> Host:
        index = len(self.hosts) + 1
        address = self.block[index + 1]
        if address == self.block.broadcast_address:
            raise RuntimeError(f"no address left in {self.block}")
        netns = f"corral-{self.suffix}-{index}"
        link, peer = f"cv{index}h{self.suffix}", f"cv{index}n{self.suffix}"
        ip("netns", "add", netns)
        host = Host(netns, link, str(address))
        self.hosts.append(host)
        ip("link", "add", link, "type", "veth", "peer", "name", peer)
        ip("link", "set", peer, "netns", netns)
        ip("link", "set", link, "master", self.bridge)
        ip("link", "set", link, "up")
        ip("addr", "add", f"{address}/{self.block.prefixlen}", "dev", peer, netns=netns)
        ip("link", "set", peer, "up", netns=netns)
        ip("link", "set", "lo", "up", netns=netns)
        return host

    def close(self) -> None:
        """Remove every namespace, link and the bridge (whatever exists of them)."""
        for host in self.hosts:
            ip("netns", "del", host.netns, check=False)
            # deleting the namespace removes its veth pair, but not at once
            ip("link", "del", host.link, check=False)
        ip("link", "del", self.bridge, check=False)


@contextlib.contextmanager
def open_network() -> Iterator[Network]:
    """A bridge on a free documentation /28, removed with its hosts at the end."""
    suffix = secrets.token_hex(3)
    network = Network(suffix, _free_block(), f"cbr{suffix}")
    try:
        ip("link", "add", network.bridge, "type", "bridge", "forward_delay", "0")
        ip("addr", "add", f"{network.address}/{network.block.prefixlen}", "dev", network.bridge)
        ip("link", "set", network.bridge, "up")
        yield network
    finally:
        network.close()


class NamespaceAgent:
    """A node agent of ``engine`` running in ``host``, dialling ``dispatcher``, with its
    node's own token (derived from the dispatcher's agent ``secret``, as drivers do)."""

    def __init__(
        self,
        host: Host,
        node_id: str,
        engine: Engine,
        dispatcher: str,
        secret: str,
        state_dir: Path,
        labels: dict[str, str] | None = None,
    ) -> None:
        self.host = host
        self.node_id = node_id
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        token_file = state_dir / "token"
        write_secret(token_file, node_token(secret, node_id))
        self.argv = agent_command(
            sys.executable,
            NodeSpec(NodeId(node_id), engine),
            dispatcher,
            str(token_file),
            str(state_dir),
        )
        for key, value in (labels or {}).items():
            self.argv += ["--label", f"{key}={value}"]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.state_dir / "agent.log"

    def start(self) -> None:
        self.proc = self.host.popen(self.argv, self.log)

    def stop(self) -> None:
        """SIGKILL the agent, then every process it left behind."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        with contextlib.suppress(OSError, StateDirBusy):
            kill_orphans(self.state_dir)
        remove_runtime_dirs(self.state_dir)
