"""The ssh driver against a real OpenSSH server on loopback: it starts agents that join and
run processes, checks host keys, runs one agent per host, reads a dead agent's last reports,
and cleans up on destroy."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from corral.agent.launcher import last_reports
from corral.agent.pidfiles import Ending, PidJournal, PidRecord
from corral.core.ids import NodeId
from corral.drivers.base import CapacityUnavailable, CloudError, NodeSpec
from corral.drivers.ssh import SSHDriver, SSHOptions
from corral.secretfile import node_token
from corral.testing import engine
from corral.testing.dispatcher import open_test_dispatcher
from corral.testing.serve import pid_alive, wait_until
from corral.tls import ServerTLS, make_self_signed

pytestmark = pytest.mark.timeout(60)

SSHD = "/usr/sbin/sshd"


@dataclass(frozen=True)
class SSHServer:
    port: int
    root: Path

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def options(self, **changes: str) -> dict[str, object]:
        return {
            "hosts": [self.host],
            "user": "root",
            "key_file": str(self.root / "client_key"),
            "known_hosts": str(self.root / "known_hosts"),
            "python": sys.executable,
            "state_dir": str(self.root / "agents"),
            **changes,
        }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def sshd() -> Iterator[SSHServer]:
    if not os.path.exists(SSHD):
        pytest.skip(f"no OpenSSH server at {SSHD} (.ci/run installs openssh-server)")
    root = Path(tempfile.mkdtemp(prefix="corral-sshd-"))
    port = _free_port()
    for key in ("host_ed25519", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / key)], check=True
        )
    shutil.copy(root / "client_key.pub", root / "authorized_keys")
    host_key = (root / "host_ed25519.pub").read_text().split()
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    config = root / "sshd_config"
    config.write_text(
        "\n".join(
            [
                "ListenAddress 127.0.0.1",
                f"Port {port}",
                f"HostKey {root / 'host_ed25519'}",
                f"PidFile {root / 'sshd.pid'}",
                f"AuthorizedKeysFile {root / 'authorized_keys'}",
                "PermitRootLogin prohibit-password",
                "UsePAM no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "StrictModes no",
                "",
            ]
        )
    )
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    log = root / "sshd.log"
    with log.open("wb") as out:
        server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=out)
    try:
        wait_until(lambda: "Server listening" in log.read_text(), "sshd to listen", 10)
        yield SSHServer(port, root)
    finally:
        server.terminate()
        server.wait(5)
        shutil.rmtree(root, ignore_errors=True)


def _agent_pids(root: Path) -> list[int]:
    return [int(p.read_text()) for p in (root / "agents").glob("*/agent.pid")]


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_a_dispatcher_boots_an_agent_over_ssh_runs_a_process_and_retires_it(
    sshd: SSHServer, tmp_path: Path, tls: bool
) -> None:
    options = "\n".join(f"{key} = {value!r}" for key, value in sshd.options().items())
    config = f"""
[[engines]]
id = "remote"
allow_root = true  # the tests may run as root
driver = "ssh"
slots = 2
base_need = 1
maximum_vms = 1
heartbeat_period = 0.2
heartbeat_warning = 1.0
heartbeat_missing = 2.0

[engines.driver_options]
{options}
"""
    agent_tls = None
    if tls:
        make_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", ["127.0.0.1"])
        agent_tls = ServerTLS.load(tmp_path / "cert.pem", tmp_path / "key.pem")
    with open_test_dispatcher(config, home=tmp_path / "home", agent_tls=agent_tls) as corral:
        client = corral.client
        node = wait_until(
            lambda: [n for n in client.list_nodes() if n["connected"]], "the ssh node", 30
        )[0]
        assert node["engine"] == "remote"
        (pid,) = _agent_pids(sshd.root)
        pinned = sshd.root / "agents" / node["node_id"] / "dispatcher.pem"
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if agent_tls is not None:  # the driver left the certificate beside the token
            assert pinned.read_text() == agent_tls.certificate
            assert b"--tls-ca" in command
        else:
            assert not pinned.exists()
            assert b"--tls-ca" not in command
        client.create_definition("hello", "exec", {"exec": "/bin/echo", "argv": ["over ssh"]})
        client.schedule_process("hello-1", "hello", restart_mode="NEVER")
        ended = client.wait_process("hello-1", timeout=20)
        assert ended["state"] == "800-EXITED"
        assert ended["assigned"] == node["node_id"]
        assert client.read_log("hello-1")["data"] == "over ssh\n"

        client.kill_node(node["node_id"])
        wait_until(lambda: not pid_alive(pid), "the remote agent stopped", 20)
        wait_until(
            lambda: not (sshd.root / "agents" / node["node_id"]).exists(),
            "its state removed",
            20,
        )


def test_one_agent_per_host_and_destroy_cleans_up(sshd: SSHServer) -> None:
    driver = SSHDriver(SSHOptions.from_options(sshd.options()), "127.0.0.1:9", "secret")
    spec = NodeSpec(NodeId("n1"), engine("e"))

    async def scenario() -> int:
        instance = await driver.create(spec, {"corral-pool": "p1"})
        assert instance.instance_id == f"{sshd.host}/n1"
        listed = await driver.list()
        assert [(i.instance_id, i.tags) for i in listed] == [
            (instance.instance_id, {"corral-pool": "p1"})
        ]
        token = sshd.root / "agents" / "n1" / "token"
        assert token.read_text() == node_token("secret", "n1")  # its own, not the secret
        assert token.stat().st_mode & 0o077 == 0
        with pytest.raises(CapacityUnavailable):
            await driver.create(NodeSpec(NodeId("n2"), engine("e")), {})
        (pid,) = _agent_pids(sshd.root)
        assert await driver.last_reports(instance.instance_id) is None  # its agent still runs
        await driver.destroy(instance.instance_id)
        assert await driver.list() == []
        return pid

    pid = asyncio.run(scenario())
    wait_until(lambda: not pid_alive(pid), "the agent gone", 5)


def test_a_dead_agents_last_reports_are_read_over_ssh(sshd: SSHServer) -> None:
    """What a dead agent's journal says reaches the dispatcher as the reports it would have
    sent: the round it had started, and the one that had ended, as it ended."""
    state = sshd.root / "agents" / "n7"
    (state / "pids").mkdir(parents=True)
    journal = PidJournal(state / "pids")
    journal.started([(4001, PidRecord("job", 2, 4001, 0, 10.0, 0))])
    journal.started([(4002, PidRecord("svc", 1, 4002, 0, 11.0, 0))])
    journal.ended(4001, Ending(None, 9, None, 12.5))
    journal.close()
    driver = SSHDriver(SSHOptions.from_options(sshd.options()), "127.0.0.1:9", "secret")

    async def scenario() -> None:
        reports = await driver.last_reports(f"{sshd.host}/n7")
        assert reports == last_reports(state)
        assert {(r.upid, r.status, r.signal) for r in reports or []} == {
            ("svc", "running", None),
            ("job", "exited", 9),
        }
        assert await driver.last_reports(f"{sshd.host}/n8") == []  # no state: nothing ran
        assert await driver.last_reports("elsewhere/n7") is None  # not one of its hosts

    try:
        asyncio.run(scenario())
    finally:
        shutil.rmtree(state)


def test_a_host_whose_key_does_not_match_is_refused(sshd: SSHServer) -> None:
    wrong = sshd.root / "wrong_known_hosts"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(sshd.root / "other")],
        check=True,
    )
    other = (sshd.root / "other.pub").read_text().split()
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n")
    options = SSHOptions.from_options(sshd.options(known_hosts=str(wrong)))
    driver = SSHDriver(options, "127.0.0.1:9", "secret")

    async def scenario() -> None:
        with pytest.raises(CloudError) as refused:
            await driver.create(NodeSpec(NodeId("n1"), engine("e")), {})
        assert "host key" in str(refused.value).lower()

    asyncio.run(scenario())
    assert _agent_pids(sshd.root) == []
