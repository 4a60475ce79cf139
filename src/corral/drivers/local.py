"""The embedded default: each node is a ``corral.agent`` process on this machine.

An instance is a directory ``<home>/nodes/<node_id>`` holding ``instance.json`` (the agent's
pid, its start time and the tags), the node's own agent token (``token``, mode 0600) and
the agent's state (logs, pid files of its children).
Agents are started in their own session so they outlive the dispatcher, which finds them
again by listing these directories. Dispatchers sharing a store on one host share the
directory (``nodes_dir``), so that a standby taking over finds the active one's agents.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from corral.agent.launcher import kill_orphans, last_reports
from corral.agent.pidfiles import proc_identity, remove_runtime_dirs
from corral.drivers.base import CERTIFICATE_NAME, Instance, NodeSpec, agent_command
from corral.drivers.wrappers import UNLIMITED
from corral.secretfile import node_token, replace_file, write_secret
from corral.wire.messages import ProcessReport


class LocalDriver:
    limits = UNLIMITED

    def __init__(
        self,
        home: Path,
        dispatcher_address: str,
        secret: str,
        nodes_dir: Path | None = None,
        *,
        certificate: str | None = None,
    ) -> None:
        """``secret`` is the dispatcher's agent secret: each agent gets its node's token;
        ``certificate`` (PEM), the agent port's, which agents then dial over TLS."""
        self.nodes_dir = nodes_dir or home / "nodes"
        self.dispatcher_address = dispatcher_address
        self._secret = secret
        self._certificate = certificate
        #: agents this dispatcher started, by node: its children until they are reaped
        self._children: dict[str, int] = {}

    async def create(self, spec: NodeSpec, tags: Mapping[str, str]) -> Instance:
        state_dir = self.nodes_dir / spec.node_id
        state_dir.mkdir(parents=True, exist_ok=True)
        token_file = state_dir / "token"
        write_secret(token_file, node_token(self._secret, spec.node_id))
        if self._certificate is not None:
            (state_dir / CERTIFICATE_NAME).write_text(self._certificate)
        argv = agent_command(
            sys.executable,
            spec,
            self.dispatcher_address,
            str(token_file),
            str(state_dir),
            tls=self._certificate is not None,
        )
        pid = await asyncio.to_thread(_spawn_agent, argv, state_dir / "agent.log")
        self._children[spec.node_id] = pid
        identity = proc_identity(pid)
        record = _AgentRecord(pid, identity[2] if identity else None, dict(tags))
        record.write(state_dir / "instance.json")
        return Instance(spec.node_id, dict(tags))

    async def list(self) -> list[Instance]:
        # Agents started by this dispatcher are its children: reap the dead ones, or they
        # would linger as zombies. (Agents of an earlier run belong to init.)
        for node_id, pid in list(self._children.items()):
            if _reaped(pid):
                del self._children[node_id]
        found: list[Instance] = []
        if not self.nodes_dir.is_dir():
            return found
        for state_dir in sorted(self.nodes_dir.iterdir()):
            record = _AgentRecord.read(state_dir / "instance.json")
            if record is None or not record.alive():
                continue
            found.append(Instance(state_dir.name, dict(record.tags)))
        return found

    async def last_reports(self, instance_id: str) -> Sequence[ProcessReport] | None:
        state_dir = self.nodes_dir / instance_id
        if state_dir.parent != self.nodes_dir or not state_dir.is_dir():
            return None
        record = _AgentRecord.read(state_dir / "instance.json")
        if record is not None and record.alive():
            return None  # its journal is its own: lost on a partition, say, not dead
        return await asyncio.to_thread(last_reports, state_dir)

    async def destroy(self, instance_id: str) -> None:
        state_dir = self.nodes_dir / instance_id
        if state_dir.parent != self.nodes_dir or not state_dir.is_dir():
            return
        record = _AgentRecord.read(state_dir / "instance.json")
        if record is not None and record.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGKILL)
            # The agent's lock on its directory is released only once it is dead; the
            # orphans can be reaped safely after that.
            for _ in range(500):
                # The agent may be a child of this process even when this driver did not
                # start it (another driver object of the same process did): reap it.
                _reaped(record.pid)
                if not record.alive():
                    break
                await asyncio.sleep(0.01)
        self._children.pop(instance_id, None)
        # off the event loop: the lock may be held a moment by a reader of the journal
        await asyncio.to_thread(kill_orphans, state_dir)
        remove_runtime_dirs(state_dir)
        shutil.rmtree(state_dir, ignore_errors=True)


def _spawn_agent(argv: list[str], log_path: Path) -> int:
    """Start an agent in its own session; its pid.

    ``posix_spawn`` rather than ``subprocess.Popen``: the agent is meant to outlive this
    dispatcher, and a Popen object warns when it is dropped while its process runs.
    """
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        return os.posix_spawn(
            argv[0],
            argv,
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log, 1),
                (os.POSIX_SPAWN_DUP2, log, 2),
            ],
            setsid=True,
        )
    finally:
        os.close(log)


def _reaped(pid: int) -> bool:
    """Reap ``pid`` if it has exited; True once it is gone."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done != 0


@dataclass(frozen=True, slots=True)
class _AgentRecord:
    """``instance.json``: which process is the node's agent, and the node's tags."""

    pid: int
    #: the kernel's start time of ``pid``, so a reused pid is never mistaken for the agent
    start_time: int | None
    tags: dict[str, str]

    def alive(self) -> bool:
        identity = proc_identity(self.pid)
        # A zombie is dead: it only waits for its (possibly long gone) parent to reap it.
        return (
            identity is not None
            and identity[0] not in ("Z", "X")
            and identity[2] == self.start_time
        )

    def write(self, path: Path) -> None:
        replace_file(path, json.dumps(asdict(self)).encode())

    @classmethod
    def read(cls, path: Path) -> _AgentRecord | None:
        try:
            doc = json.loads(path.read_text())
            return cls(int(doc["pid"]), doc.get("start_time"), dict(doc.get("tags") or {}))
        except (OSError, ValueError, KeyError, TypeError):
            return None
