"""The ssh driver: nodes are hosts of a fixed list, reached with asyncssh.

Creating an instance takes a host that runs no agent of this pool yet, and over SSH (host
keys verified against ``known_hosts``; no password) writes the node's own agent token (from
stdin, never on a command line), its tags, and starts ``python -m corral.agent`` there in a
session of its own, so it outlives the connection. Listing asks every host which agents
are alive; destroying stops the agent, kills what it left running, and removes its state.
Before a lost node is destroyed, its dead agent's journal is read there (``last_reports``),
so that what the agent did but could not report still counts. The host needs Python and
corral installed (``python`` names the interpreter).

Settings, in the engine's ``driver_options``::

    hosts = ["node1", "node2:2222"]   # one node per host
    user = "corral"
    key_file = "~/.ssh/id_ed25519"
    known_hosts = "~/.ssh/known_hosts" # host keys are always checked
    python = "python3"
    state_dir = ".corral-agent"        # on the host, relative to the user's home
"""

from __future__ import annotations

import asyncio
import builtins
import json
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from corral.drivers.base import (
    CapacityUnavailable,
    CloudError,
    Instance,
    NodeSpec,
    agent_command,
    write_certificate_lines,
)
from corral.secretfile import node_token
from corral.wire.codec import ProtocolError, decode_whole_frame
from corral.wire.messages import ProcessReport

DEFAULT_PORT = 22


@dataclass(frozen=True, slots=True)
class SSHOptions:
    hosts: tuple[str, ...]
    user: str
    #: paths on this machine, already expanded
    key_file: str
    known_hosts: str
    python: str = "python3"
    state_dir: str = ".corral-agent"
    connect_timeout: float = 10.0

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> SSHOptions:
        return cls(
            hosts=tuple(options["hosts"]),
            user=str(options["user"]),
            key_file=os.path.expanduser(str(options["key_file"])),
            known_hosts=os.path.expanduser(str(options.get("known_hosts", "~/.ssh/known_hosts"))),
            python=str(options.get("python", "python3")),
            state_dir=str(options.get("state_dir", ".corral-agent")),
            connect_timeout=float(options.get("connect_timeout", 10.0)),
        )


class SSHDriver:
    def __init__(
        self,
        options: SSHOptions,
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
        self._lock = asyncio.Lock()

    async def create(self, spec: NodeSpec, tags: Mapping[str, str]) -> Instance:
        async with self._lock:  # two boots must not pick the same free host
            taken = {i.instance_id.partition("/")[0] for i in await self.list()}
            host = next((h for h in self.options.hosts if h not in taken), None)
            if host is None:
                raise CapacityUnavailable(
                    f"every host of the ssh driver runs an agent ({len(taken)})",
                    instance_type_only=False,
                )
            state = f"{self.options.state_dir}/{spec.node_id}"
            record = json.dumps({"node_id": spec.node_id, "tags": dict(tags)})
            script = "\n".join(
                [
                    "set -e",
                    "umask 077",
                    f"mkdir -p {shlex.quote(state)}",
                    f"cat > {shlex.quote(state + '/token')}",
                    *write_certificate_lines(state, self._certificate),
                    f"printf '%s' {shlex.quote(record)} > {shlex.quote(state + '/instance.json')}",
                    # setsid: its own session, so it outlives this connection
                    f"setsid {shlex.join(self._agent(spec, state))}"
                    f" > {shlex.quote(state + '/agent.log')} 2>&1 < /dev/null &",
                    f"echo $! > {shlex.quote(state + '/agent.pid')}",
                ]
            )
            await self._run(host, script, stdin=node_token(self._secret, spec.node_id))
            return Instance(f"{host}/{spec.node_id}", dict(tags))

    async def list(self) -> list[Instance]:
        found: list[Instance] = []
        results = await asyncio.gather(*(self._list_host(h) for h in self.options.hosts))
        for listed in results:
            found += listed
        return found

    async def last_reports(self, instance_id: str) -> Sequence[ProcessReport] | None:
        where = self._state_of(instance_id)
        if where is None:
            return None
        host, state = where
        python = shlex.quote(self.options.python)
        script = (
            f"[ -d {state} ] || exit 0\n"
            f"{python} -c 'import sys; from corral.agent.launcher import print_last_reports;"
            f" print_last_reports(sys.argv[1])' {state}"
        )
        output = (await self._run(host, script)).strip()
        if output == "busy":
            return None  # its agent still runs (the node was lost on a partition)
        try:
            messages = decode_whole_frame(bytes.fromhex(output)) if output else []
        except (ValueError, ProtocolError) as exc:
            raise CloudError(f"{host}: unreadable last reports of {instance_id}: {exc}") from exc
        return [msg for msg in messages if isinstance(msg, ProcessReport)]

    async def destroy(self, instance_id: str) -> None:
        where = self._state_of(instance_id)
        if where is None:
            return
        host, state = where
        python = shlex.quote(self.options.python)
        script = "\n".join(
            [
                f"[ -d {state} ] || exit 0",
                f"pid=$(cat {state}/agent.pid 2>/dev/null || true)",
                '[ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true',
                # wait for the agent's lock to go before its orphans are killed
                'for i in $(seq 100); do [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null'
                " || break; sleep 0.05; done",
                f"{python} -c 'import sys; from corral.agent.launcher import kill_orphans;"
                f" kill_orphans(sys.argv[1])' {state} || true",
                f"rm -rf {state}",
            ]
        )
        await self._run(host, script)

    # --- internals ----------------------------------------------------------------------------

    def _state_of(self, instance_id: str) -> tuple[str, str] | None:
        """The host and (shell-quoted) state directory of one of our instances, else None."""
        host, _, node_id = instance_id.partition("/")
        if host not in self.options.hosts or not node_id or "/" in node_id:
            return None
        return host, shlex.quote(f"{self.options.state_dir}/{node_id}")

    def _agent(self, spec: NodeSpec, state: str) -> builtins.list[str]:
        return agent_command(
            self.options.python,
            spec,
            self.dispatcher_address,
            f"{state}/token",
            state,
            tls=self._certificate is not None,
        )

    async def _list_host(self, host: str) -> builtins.list[Instance]:
        state = shlex.quote(self.options.state_dir)
        script = (
            f'for d in {state}/*/; do [ -f "$d/agent.pid" ] || continue;'
            ' kill -0 "$(cat "$d/agent.pid")" 2>/dev/null && cat "$d/instance.json" && echo;'
            " done; true"
        )
        output = await self._run(host, script)
        found = []
        for line in output.splitlines():
            try:
                record = json.loads(line)
                found.append(Instance(f"{host}/{record['node_id']}", dict(record["tags"])))
            except (ValueError, KeyError, TypeError):
                continue
        return found

    async def _run(self, host: str, script: str, stdin: str | None = None) -> str:
        import asyncssh  # the ssh extra: only this driver needs it

        name, _, port = host.rpartition(":") if ":" in host else (host, "", "")
        options = self.options
        try:
            async with asyncssh.connect(
                name,
                port=int(port) if port else DEFAULT_PORT,
                username=options.user,
                client_keys=[options.key_file],
                known_hosts=options.known_hosts,
                connect_timeout=options.connect_timeout,
            ) as conn:
                result = await conn.run(script, input=stdin, check=True)
        except (OSError, asyncssh.Error) as exc:
            raise CloudError(f"ssh {options.user}@{host}: {_describe(exc)}") from exc
        return str(result.stdout or "")


def _describe(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    return str(reason)


def ssh_options_errors(options: Mapping[str, Any]) -> Sequence[tuple[str, str]]:
    """``(key, what is wrong)`` for each bad ssh setting; empty when they are fine."""
    errors: list[tuple[str, str]] = []
    hosts = options.get("hosts")
    if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) and h for h in hosts):
        errors.append(("hosts", "must be a non-empty list of host names (host or host:port)"))
    for key in ("user", "key_file"):
        if not isinstance(options.get(key), str) or not options.get(key):
            errors.append((key, "must be a non-empty string"))
    for key in ("known_hosts", "python", "state_dir"):
        if key in options and (not isinstance(options[key], str) or not options[key]):
            errors.append((key, "must be a non-empty string"))
    known = {"hosts", "user", "key_file", "known_hosts", "python", "state_dir", "connect_timeout"}
    expected = ", ".join(sorted(known))
    for key in options:
        if key not in known:
            errors.append((key, f"is not an ssh driver option; expected {expected}"))
    return errors
