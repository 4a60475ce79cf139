"""The slurm driver against a real single-node Slurm (slurmctld + slurmd on loopback,
started by the test, no munge): a node is a batch job whose agent joins, runs a process,
and goes away when the node is retired."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.core.ids import NodeId
from corral.drivers.base import TAG_POOL, NodeSpec
from corral.drivers.slurm import SlurmDriver, SlurmOptions
from corral.secretfile import node_token
from corral.testing import engine
from corral.testing.dispatcher import open_test_dispatcher
from corral.testing.serve import wait_until

pytestmark = pytest.mark.timeout(90)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _squeue(env: dict[str, str]) -> str:
    return subprocess.run(
        ["squeue", "-h", "-o", "%i %j %T"], env=env, capture_output=True, text=True, check=True
    ).stdout


def _job_ids(env: dict[str, str]) -> set[str]:
    return {line.split()[0] for line in _squeue(env).splitlines() if line.strip()}


@pytest.fixture(scope="module")
def slurm() -> Iterator[dict[str, str]]:
    if shutil.which("slurmctld") is None or shutil.which("slurmd") is None:
        pytest.skip("Slurm is not installed (.ci/run installs slurm-wlm)")
    root = Path(tempfile.mkdtemp(prefix="corral-slurm-"))
    (root / "state").mkdir()
    (root / "spool").mkdir()
    probe = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    memory = re.search(r"RealMemory=(\d+)", probe)
    hostname = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    conf = root / "slurm.conf"
    conf.write_text(
        "\n".join(
            [
                "ClusterName=corraltest",
                "SlurmctldHost=localhost",
                f"SlurmctldPort={_free_port()}",
                f"SlurmdPort={_free_port()}",
                "SlurmUser=root",
                "AuthType=auth/none",
                "CredType=cred/none",
                "CommunicationParameters=NoCtldInAddrAny,NoInAddrAny",
                f"StateSaveLocation={root / 'state'}",
                f"SlurmdSpoolDir={root / 'spool'}",
                f"SlurmctldPidFile={root / 'slurmctld.pid'}",
                f"SlurmdPidFile={root / 'slurmd.pid'}",
                f"SlurmctldLogFile={root / 'slurmctld.log'}",
                f"SlurmdLogFile={root / 'slurmd.log'}",
                "MailProg=/bin/true",
                "ProctrackType=proctrack/pgid",
                "TaskPlugin=task/none",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_CPU",
                "ReturnToService=2",
                f"NodeName=localhost NodeHostname={hostname} NodeAddr=127.0.0.1 "
                f"CPUs={os.cpu_count()} RealMemory={memory[1] if memory else 1000} State=UNKNOWN",
                "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    env = {**os.environ, "SLURM_CONF": str(conf)}
    daemons = [
        subprocess.Popen(["slurmctld", "-D", "-i"], env=env, cwd=root, stderr=subprocess.DEVNULL),
        subprocess.Popen(["slurmd", "-D"], env=env, cwd=root, stderr=subprocess.DEVNULL),
    ]
    try:

        def idle() -> bool:
            state = subprocess.run(
                ["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True
            ).stdout.strip()
            return state == "idle"

        wait_until(idle, "the Slurm node to be idle", 30, every=0.1)
        yield env
    finally:
        subprocess.run(["scancel", "--partition=debug"], env=env, check=False)
        wait_until(lambda: not _squeue(env).strip(), "the queue to empty", 20, every=0.1)
        for daemon in reversed(daemons):
            daemon.terminate()
            daemon.wait(10)
        shutil.rmtree(root, ignore_errors=True)


def test_a_node_is_a_batch_job_whose_agent_joins_and_runs_a_process(
    slurm: dict[str, str], tmp_path: Path
) -> None:
    state_dir = tmp_path / "agents"
    config = f"""
[[engines]]
id = "hpc"
allow_root = true  # the tests may run as root
driver = "slurm"
slots = 1
base_need = 1
maximum_vms = 1
boot_timeout = 60.0
heartbeat_period = 0.2
heartbeat_warning = 1.0
heartbeat_missing = 3.0

[engines.driver_options]
state_dir = "{state_dir}"
python = "{sys.executable}"
slurm_conf = "{slurm["SLURM_CONF"]}"
"""
    with open_test_dispatcher(config, home=tmp_path / "home") as corral:
        client = corral.client
        node = wait_until(
            lambda: [n for n in client.list_nodes() if n["connected"]], "the Slurm node", 60
        )[0]
        jobs = _squeue(slurm)
        assert "corral-" in jobs
        assert node["node_id"] in jobs
        assert "RUNNING" in jobs
        client.create_definition("hello", "exec", {"exec": "/bin/echo", "argv": ["from slurm"]})
        client.schedule_process("hello-1", "hello", restart_mode="NEVER")
        ended = client.wait_process("hello-1", timeout=30)
        assert ended["state"] == "800-EXITED"
        assert client.read_log("hello-1")["data"] == "from slurm\n"

        client.kill_node(node["node_id"])
        wait_until(lambda: node["node_id"] not in _squeue(slurm), "the job gone", 30)


def test_the_driver_lists_only_the_jobs_of_its_pool(slurm: dict[str, str], tmp_path: Path) -> None:
    options = SlurmOptions(
        state_dir=str(tmp_path / "agents"),
        python="/bin/false",  # the job starts and ends at once: only the queue matters here
        slurm_conf=slurm["SLURM_CONF"],
    )
    driver = SlurmDriver(options, "127.0.0.1:9", "secret")
    other = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--job-name=someone-else",
            "--output=/dev/null",
            "--wrap=sleep 30",
        ],
        env=slurm,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()

    async def scenario() -> Any:
        spec = NodeSpec(NodeId("hpc-0001"), engine("hpc", slots=1))
        instance = await driver.create(spec, {TAG_POOL: "abc123"})
        listed = await driver.list()
        return instance, listed

    try:
        instance, listed = asyncio.run(scenario())
        assert instance.instance_id.isdigit()
        token = (tmp_path / "agents" / "hpc-0001" / "token").read_text()
        assert token == node_token("secret", "hpc-0001")  # its own, not the secret
        by_id = {i.instance_id: i.tags for i in listed}
        assert by_id[instance.instance_id] == {
            "corral-pool": "abc123",
            "corral-node": "hpc-0001",
            "corral-engine": "hpc",
        }
        assert other not in by_id  # a job that is not corral's is never claimed
        asyncio.run(driver.destroy(instance.instance_id))
        wait_until(lambda: instance.instance_id not in _job_ids(slurm), "the job cancelled", 20)
    finally:
        subprocess.run(["scancel", other], env=slurm, check=False)
