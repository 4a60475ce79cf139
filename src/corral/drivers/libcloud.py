"""The libcloud driver: nodes on any Apache Libcloud compute provider (EC2, GCE, Azure,
OpenStack...), each starting its agent from cloud-init user data.

An instance is named ``corral-<pool>-<node id>`` and carries the pool's tags as provider
metadata where the provider has it; the name alone is enough to find the instances of a
pool again after a restart, on any provider. Libcloud is synchronous, so every call runs
in a thread. Provider errors are classified for ``drivers.wrappers.Guarded`` (rate limits,
quota, capacity) by their libcloud type or message.

Settings, in the engine's ``driver_options``::

    provider = "EC2"                  # a libcloud.compute.types.Provider name
    key = "AKIA..."                   # the provider's credentials (or key_file)
    secret_file = "/etc/corral/ec2"   # read at start, never stored in the config
    region = "eu-west-1"
    size = "t3.small"                 # the provider's size id (else each instance type's)
    image = "ami-..."                 # an image with Python and corral installed
    python = "python3"
    agent_dir = "/var/lib/corral-agent"
"""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.drivers.base import (
    TAG_POOL,
    CapacityUnavailable,
    CloudError,
    Instance,
    NodeSpec,
    QuotaExceeded,
    RateLimited,
    agent_command,
    instance_name,
    tags_from_instance_name,
    write_certificate_lines,
)
from corral.errors import InvalidRequest
from corral.secretfile import node_token
from corral.wire.messages import ProcessReport


@dataclass(frozen=True, slots=True)
class LibcloudOptions:
    provider: str
    size: str
    image: str
    key: str = ""
    secret: str = ""
    region: str | None = None
    python: str = "python3"
    #: where the agent keeps its state on the instance
    agent_dir: str = "/var/lib/corral-agent"

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> LibcloudOptions:
        secret = str(options.get("secret", ""))
        if "secret_file" in options:
            path = Path(str(options["secret_file"])).expanduser()
            try:
                secret = path.read_text().strip()
            except OSError as exc:
                raise InvalidRequest(
                    f"driver_options.secret_file: cannot read {path}: {exc.strerror}",
                    field="driver_options.secret_file",
                ) from exc
        region = options.get("region")
        return cls(
            provider=str(options["provider"]),
            size=str(options["size"]),
            image=str(options["image"]),
            key=str(options.get("key", "")),
            secret=secret,
            region=str(region) if region else None,
            python=str(options.get("python", "python3")),
            agent_dir=str(options.get("agent_dir", "/var/lib/corral-agent")),
        )


class LibcloudDriver:
    def __init__(
        self,
        options: LibcloudOptions,
        dispatcher_address: str,
        secret: str,
        provider: Any | None = None,
        *,
        certificate: str | None = None,
    ) -> None:
        """``secret`` is the dispatcher's agent secret (each agent gets its node's token);
        ``provider`` is a libcloud NodeDriver made beforehand (a test's dummy), otherwise one
        is made from ``options``; ``certificate`` (PEM) is the agent port's, which agents
        then dial over TLS."""
        self.options = options
        self.dispatcher_address = dispatcher_address
        self._secret = secret
        self._certificate = certificate
        self._provider = provider
        #: tags of the instances this run created, for providers that keep no metadata
        self._tags: dict[str, dict[str, str]] = {}

    async def create(self, spec: NodeSpec, tags: Mapping[str, str]) -> Instance:
        name = instance_name(tags.get(TAG_POOL, ""), spec.node_id)
        token = node_token(self._secret, spec.node_id)
        userdata = agent_user_data(
            spec,
            self.dispatcher_address,
            token,
            self.options.python,
            self.options.agent_dir,
            self._certificate,
        )
        node = await self._call(self._create, spec, name, dict(tags), userdata)
        instance_id = str(node.id)
        self._tags[instance_id] = dict(tags)
        return Instance(instance_id, dict(tags))

    async def list(self) -> list[Instance]:
        nodes = await self._call(lambda: self._driver().list_nodes())
        found = []
        for node in nodes:
            if str(getattr(node, "state", "")).lower() in ("terminated", "stopped"):
                continue
            tags = self._tags.get(str(node.id)) or tags_from_instance_name(str(node.name))
            if tags is not None:
                found.append(Instance(str(node.id), tags))
        return found

    async def last_reports(self, instance_id: str) -> Sequence[ProcessReport] | None:
        return None  # its agents' journals are out of this dispatcher's reach

    async def destroy(self, instance_id: str) -> None:
        def destroy() -> None:
            driver = self._driver()
            for node in driver.list_nodes():
                if str(node.id) == instance_id:
                    driver.destroy_node(node)
                    return

        await self._call(destroy)
        self._tags.pop(instance_id, None)

    # --- internals ----------------------------------------------------------------------------

    def _driver(self) -> Any:
        if self._provider is None:
            from libcloud.compute.providers import get_driver
            from libcloud.compute.types import Provider

            cls = get_driver(getattr(Provider, self.options.provider.upper()))
            kwargs = {"region": self.options.region} if self.options.region else {}
            self._provider = cls(self.options.key, self.options.secret, **kwargs)
        return self._provider

    def _create(self, spec: NodeSpec, name: str, tags: dict[str, str], userdata: str) -> Any:
        driver = self._driver()
        wanted = spec.instance_type.provider_type if spec.instance_type else self.options.size
        size = next((s for s in driver.list_sizes() if str(s.id) == wanted), None)
        image = next((i for i in driver.list_images() if str(i.id) == self.options.image), None)
        if size is None or image is None:
            missing = f"size {wanted!r}" if size is None else f"image {self.options.image!r}"
            raise CloudError(f"the provider has no {missing}")
        try:
            return driver.create_node(
                name=name, size=size, image=image, ex_metadata=tags, ex_userdata=userdata
            )
        except TypeError:
            # a provider without metadata or user data (libcloud's dummy driver)
            return driver.create_node(name=name, size=size, image=image)

    async def _call(self, func: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(func, *args)
        except CloudError:
            raise
        except Exception as exc:
            raise classify(exc) from exc


def agent_user_data(
    spec: NodeSpec,
    dispatcher: str,
    token: str,
    python: str,
    agent_dir: str,
    certificate: str | None = None,
) -> str:
    """A cloud-init script that starts the node's agent at boot; ``token`` is the node's,
    ``certificate`` the dispatcher's agent port's (PEM; None: plain TCP)."""
    where = shlex.quote(agent_dir)
    argv = agent_command(
        python, spec, dispatcher, f"{agent_dir}/token", agent_dir, tls=certificate is not None
    )
    return "\n".join(
        [
            "#!/bin/sh",
            "umask 077",
            f"mkdir -p {where}",
            f"printf '%s' {shlex.quote(token)} > {where}/token",
            *write_certificate_lines(agent_dir, certificate),
            f"setsid {shlex.join(argv)} > {where}/agent.log 2>&1 < /dev/null &",
            "",
        ]
    )


def classify(exc: Exception) -> CloudError:
    """A provider error as the cloud error that says what to do about it."""
    name = type(exc).__name__
    text = str(exc) or name
    lowered = text.lower()
    if name == "RateLimitReachedError" or "throttl" in lowered or "rate limit" in lowered:
        retry_after = float(getattr(exc, "retry_after", 0) or 0) or 5.0
        return RateLimited(text, time.time() + retry_after)
    if "quota" in lowered or "limitexceeded" in lowered:
        return QuotaExceeded(text)
    if "capacity" in lowered:
        return CapacityUnavailable(text, instance_type_only=True)
    return CloudError(text)


def libcloud_options_errors(options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(key, what is wrong)`` for each bad libcloud setting; empty when they are fine."""
    known = {
        "provider", "key", "secret", "secret_file", "region", "size", "image", "python",
        "agent_dir",
    }  # fmt: skip
    errors = [
        (key, f"is not a libcloud driver option; expected {', '.join(sorted(known))}")
        for key in options
        if key not in known
    ]
    for key in ("provider", "size", "image"):
        if not isinstance(options.get(key), str) or not options.get(key):
            errors.append((key, "must be a non-empty string"))
    for key in sorted(known - {"provider", "size", "image"}):
        if key in options and not isinstance(options[key], str):
            errors.append((key, "must be a string"))
    return errors
