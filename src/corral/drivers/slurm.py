"""The slurm driver: each node is a Slurm batch job running the agent, the way
dask-jobqueue grows a cluster through a batch system, so corral can use an HPC site's
machines.

A job is named ``corral-<pool>-<node id>``, which is all a restarted dispatcher needs to
find the jobs of its pool with ``squeue``; pending and running jobs are live instances.
The agent's token and state live under ``state_dir``, which must be on a file system the
compute nodes share (as home directories are on most sites). Destroying a node cancels
its job; the pool first asks the agent to shut down, so its processes end with it.

Settings, in the engine's ``driver_options``::

    state_dir = "/shared/corral"     # on a file system the compute nodes see
    python = "python3"               # as found on the compute nodes
    partition = "batch"              # optional
    time_limit = "7-00:00:00"        # optional: the job's wall-time limit
    sbatch_args = ["--account=x"]    # optional, passed as they are
    slurm_conf = "/etc/slurm/slurm.conf"  # optional: SLURM_CONF for the commands
"""

from __future__ import annotations

import asyncio
import builtins
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.drivers.base import (
    CERTIFICATE_NAME,
    TAG_POOL,
    CloudError,
    Instance,
    NodeSpec,
    agent_command,
    instance_name,
    tags_from_instance_name,
)
from corral.secretfile import node_token
from corral.wire.messages import ProcessReport

LIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "RESIZING", "SUSPENDED"})


@dataclass(frozen=True, slots=True)
class SlurmOptions:
    state_dir: str
    python: str = "python3"
    partition: str | None = None
    time_limit: str | None = None
    sbatch_args: tuple[str, ...] = ()
    slurm_conf: str | None = None

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> SlurmOptions:
        def text(key: str) -> str | None:
            value = options.get(key)
            return str(value) if value else None

        return cls(
            state_dir=os.path.expanduser(str(options["state_dir"])),
            python=str(options.get("python", "python3")),
            partition=text("partition"),
            time_limit=text("time_limit"),
            sbatch_args=tuple(str(a) for a in options.get("sbatch_args", ())),
            slurm_conf=text("slurm_conf"),
        )


class SlurmDriver:
    def __init__(
        self,
        options: SlurmOptions,
        dispatcher_address: str,
        secret: str,
        *,
        certificate: str | None = None,
    ) -> None:
        """``secret`` is the dispatcher's agent secret: each agent gets its node's token;
        ``certificate`` (PEM), the agent port's, which agents then dial over TLS."""
        self.options = options
        self.dispatcher_address = dispatcher_address
        self._secret = secret
        self._certificate = certificate

    async def create(self, spec: NodeSpec, tags: Mapping[str, str]) -> Instance:
        name = instance_name(tags.get(TAG_POOL, ""), spec.node_id)
        state = Path(self.options.state_dir) / spec.node_id
        await asyncio.to_thread(_write_token, state, node_token(self._secret, spec.node_id))
        if self._certificate is not None:
            await asyncio.to_thread((state / CERTIFICATE_NAME).write_text, self._certificate)
        argv = ["sbatch", "--parsable", f"--job-name={name}"]
        argv += [f"--output={state / 'job.log'}", "--ntasks=1", "--nodes=1"]
        kind = spec.instance_type
        if kind is not None:
            argv += [f"--cpus-per-task={max(1, int(kind.vcpus))}", f"--mem={kind.ram}M"]
            argv += [f"--gres=gpu:{kind.gpus}"] if kind.gpus else []
        else:
            argv += [f"--cpus-per-task={max(1, spec.engine.slots)}"]
        if self.options.partition:
            argv.append(f"--partition={self.options.partition}")
        if self.options.time_limit:
            argv.append(f"--time={self.options.time_limit}")
        argv += [*self.options.sbatch_args, f"--wrap=exec {shlex.join(self._agent(spec, state))}"]
        out = await self._run(argv)
        job_id = out.strip().split(";")[0]
        if not job_id.isdigit():
            raise CloudError(f"sbatch answered {out.strip()!r}, not a job id")
        return Instance(job_id, dict(tags))

    async def list(self) -> list[Instance]:
        out = await self._run(["squeue", "-h", "--me", "-o", "%i|%j|%T"])
        found = []
        for line in out.splitlines():
            job_id, _, rest = line.partition("|")
            name, _, state = rest.partition("|")
            tags = tags_from_instance_name(name.strip())
            if tags is not None and state.strip() in LIVE_STATES:
                found.append(Instance(job_id.strip(), tags))
        return found

    async def last_reports(self, instance_id: str) -> Sequence[ProcessReport] | None:
        return None  # its agents' journals are out of this dispatcher's reach

    async def destroy(self, instance_id: str) -> None:
        if instance_id.isdigit():
            await self._run(["scancel", instance_id])

    # --- internals ----------------------------------------------------------------------------

    def _agent(self, spec: NodeSpec, state: Path) -> builtins.list[str]:
        return agent_command(
            self.options.python,
            spec,
            self.dispatcher_address,
            str(state / "token"),
            str(state),
            tls=self._certificate is not None,
        )

    async def _run(self, argv: Sequence[str]) -> str:
        env = dict(os.environ)
        if self.options.slurm_conf:
            env["SLURM_CONF"] = self.options.slurm_conf
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
        except OSError as exc:
            raise CloudError(f"cannot run {argv[0]}: {exc.strerror}") from exc
        out, err = await proc.communicate()
        if proc.returncode != 0:
            message = err.decode(errors="replace").strip() or f"exit status {proc.returncode}"
            raise CloudError(f"{argv[0]}: {message}")
        return out.decode(errors="replace")


def _write_token(state: Path, token: str) -> None:
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(state / "token", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, token.encode())
    finally:
        os.close(fd)


def slurm_options_errors(options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(key, what is wrong)`` for each bad slurm setting; empty when they are fine."""
    known = {"state_dir", "python", "partition", "time_limit", "sbatch_args", "slurm_conf"}
    errors = [
        (key, f"is not a slurm driver option; expected {', '.join(sorted(known))}")
        for key in options
        if key not in known
    ]
    if not isinstance(options.get("state_dir"), str) or not options.get("state_dir"):
        errors.append(("state_dir", "must be a path on a file system the compute nodes share"))
    for key in ("python", "partition", "time_limit", "slurm_conf"):
        if key in options and not isinstance(options[key], str):
            errors.append((key, "must be a string"))
    args = options.get("sbatch_args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        errors.append(("sbatch_args", "must be a list of strings"))
    return errors
