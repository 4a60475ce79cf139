"""Wires store, state, hub, pool and loops into a running dispatcher; starts and stops it.

The order in ``start`` is the recovery story: load the store (the truth), mark every
known node *unknown* (but booting and shutting-down nodes go on booting and being
retired), open the agent port again at the address agents know, and let the loops run.
Agents that still run re-join and report what they run; nodes that never come back are
declared lost after ``heartbeat_missing`` and their processes follow their restart modes.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from corral.clock import Clock, SystemClock
from corral.config import Config
from corral.core.ids import EngineId
from corral.core.node_states import NodeState
from corral.dispatcher.events import EventBus
from corral.dispatcher.mapper import Mapper
from corral.dispatcher.metrics import Metrics
from corral.dispatcher.nodes import Nodes
from corral.dispatcher.retention import Reaper
from corral.dispatcher.service import Dispatcher
from corral.dispatcher.space import SpaceGuard
from corral.dispatcher.state import State
from corral.drivers.base import Driver
from corral.drivers.fake import FakeDriver, FakeFaults
from corral.drivers.libcloud import LibcloudDriver, LibcloudOptions
from corral.drivers.local import LocalDriver
from corral.drivers.slurm import SlurmDriver, SlurmOptions
from corral.drivers.ssh import SSHDriver, SSHOptions
from corral.errors import Conflict
from corral.hub import Hub
from corral.pool import NodePool
from corral.queue import QueueServer
from corral.secretfile import load_or_create_token
from corral.store import GroupCommitter, PostgresStore, Put, Store, Table, open_store
from corral.tls import ServerTLS

log = logging.getLogger("corral.runtime")

#: seconds between passes of the node loop (health, instance sync, boots)
TICK = 0.2


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    home: Path
    config: Config
    agent_token: str
    #: where agents dial; None reuses the address of the last run, else a free port
    agent_listen: tuple[str, int] | None = None
    store_url: str | None = None
    #: drivers made beforehand, by engine (a test's fake cloud that outlives one run)
    drivers: Mapping[EngineId, Driver] | None = None
    #: where to host the pipelines' shared event queue, in this dispatcher's store
    queue_listen: tuple[str, int] | None = None
    #: the lease epoch this dispatcher holds (``dispatcher.standby``): the store refuses
    #: commits once another dispatcher has taken the lease; None: no lease (SQLite)
    epoch: int | None = None
    #: how long the lease lasts unrenewed: agents leave a dispatcher silent for that long
    lease_duration: float = 0.0
    #: the agent addresses (HOST:PORT) of the other dispatchers of the store
    peers: tuple[str, ...] = ()
    #: whether the caller holds ``home``'s lock already (a standby holds it between terms)
    home_locked: bool = False
    #: the agent port's certificate (None: plain TCP); agents are handed it to trust
    tls: ServerTLS | None = None


class Runtime:
    def __init__(self, settings: RuntimeSettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.stopped = asyncio.Event()
        self.failure: BaseException | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._store: Store | None = None
        self._committer: GroupCommitter | None = None
        self._hub: Hub | None = None
        self._nodes: Nodes | None = None
        self._events: EventBus | None = None
        self.dispatcher: Dispatcher | None = None
        self.agent_address: tuple[str, int] | None = None
        self._lock: int | None = None
        self._fakes: list[FakeDriver] = []
        self.queue: QueueServer | None = None

    async def start(self) -> Dispatcher:
        settings = self.settings
        home = settings.home
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not settings.home_locked:
            self._lock = lock_home(home)
        store_url = settings.store_url or f"sqlite:///{home / 'corral.db'}"
        self._store = store = await asyncio.to_thread(open_store, store_url)
        if settings.epoch is not None:
            if not isinstance(store, PostgresStore):
                raise Conflict("a lease needs a PostgreSQL store", field="store")
            store.fence(settings.epoch, settings.lease_duration)
        loaded = await asyncio.to_thread(store.load, State.convert)
        self._committer = committer = GroupCommitter(store)
        await committer.start()
        state = State(committer, self._fatal)
        state.load(loaded)
        for node in list(state.nodes.values()):
            # Unknown until its agent is heard from again. A node still booting keeps its
            # boot_timeout (from now), and one being retired goes on being retired.
            if node.state not in (NodeState.BOOTING, NodeState.SHUTTING_DOWN):
                state.nodes[node.node_id] = replace(node, state=NodeState.UNKNOWN)
        if settings.queue_listen is not None:
            secret = await asyncio.to_thread(load_or_create_token, home / "queue_secret")
            self.queue = QueueServer(committer, secret)
            await self.queue.start(
                *settings.queue_listen,
                loaded.tables[Table.EVENTS],
                settings.tls.context() if settings.tls is not None else None,
            )
            log.info("event queue on %s:%d", *self.queue.address)
        pool_id = loaded.tables[Table.META].get("pool", {}).get("id")
        if pool_id is None:
            pool_id = secrets.token_hex(6)
            await committer.commit([Put(Table.META, "pool", {"id": pool_id})])

        sock = self._agent_socket()
        host, port = sock.getsockname()[:2]
        self.agent_address = (host, port)
        (home / "agent_address").write_text(f"{host}:{port}\n")
        dispatchers = [f"{host}:{port}", *settings.peers]
        drivers = self._drivers(",".join(dispatchers))
        nodes_ref: list[Nodes] = []
        metrics = Metrics(state, lambda: nodes_ref[0].describe_nodes(), self.clock.time)
        state.add_listener(metrics.on_commit)
        pool = NodePool(pool_id, drivers, metrics.driver_call)

        mapper_ref: list[Mapper] = []
        self._nodes = nodes = Nodes(
            state,
            settings.config,
            self.clock,
            pool,
            lambda: mapper_ref[0].wake(),
            metrics.boot_ended,
        )
        nodes_ref.append(nodes)
        nodes.epoch = settings.epoch or 0
        nodes.lease_duration = settings.lease_duration
        nodes.dispatchers = dispatchers
        mapper = Mapper(state, settings.config, self.clock, nodes)
        mapper_ref.append(mapper)
        self._events = events = EventBus()
        state.add_listener(events.on_commit)
        self._hub = hub = Hub(settings.agent_token, nodes)
        await hub.start_on(sock, settings.tls.context() if settings.tls is not None else None)
        self._fakes = [d for d in drivers.values() if isinstance(d, FakeDriver)]
        for fake in self._fakes:
            fake.bind(hub.attach)
        self.dispatcher = Dispatcher(
            state,
            settings.config,
            self.clock,
            nodes,
            events,
            mapper.wake,
            metrics,
            SpaceGuard(store, settings.config.store_reserve_mb),
            queue=self.queue,
        )
        loop = asyncio.get_running_loop()
        reaper = Reaper(state, settings.config.retention, self.clock, metrics.forgotten.inc)
        self._tasks = [
            loop.create_task(mapper.run(), name="mapper"),
            loop.create_task(self._node_loop(nodes), name="nodes"),
            loop.create_task(reaper.run(), name="retention"),
        ]
        mapper.wake()
        log.info(
            "dispatcher started: %d process(es), %d node(s) known, agents dial %s:%d",
            len(state.processes),
            len(state.nodes),
            host,
            port,
        )
        return self.dispatcher

    def renewed(self, peers: list[str]) -> None:
        """The lease was renewed: tell the agents, and which dispatchers there are now."""
        if self._nodes is not None and self.agent_address is not None:
            host, port = self.agent_address
            self._nodes.renewed([f"{host}:{port}", *peers])

    def _drivers(self, agent_address: str) -> dict[EngineId, Driver]:
        """One driver per engine: given in the settings, else made from the engine's."""
        settings = self.settings
        given = settings.drivers or {}
        certificate = settings.tls.certificate if settings.tls is not None else None
        local: LocalDriver | None = None
        drivers: dict[EngineId, Driver] = {}
        for engine in settings.config.engines:
            if engine.engine_id in given:
                drivers[engine.engine_id] = given[engine.engine_id]
            elif engine.driver == "fake":
                faults = FakeFaults(**engine.driver_options)
                drivers[engine.engine_id] = FakeDriver(settings.agent_token, faults)
            elif engine.driver == "ssh":
                options = SSHOptions.from_options(engine.driver_options)
                drivers[engine.engine_id] = SSHDriver(
                    options, agent_address, settings.agent_token, certificate=certificate
                )
            elif engine.driver == "slurm":
                batch = SlurmOptions.from_options(engine.driver_options)
                drivers[engine.engine_id] = SlurmDriver(
                    batch, agent_address, settings.agent_token, certificate=certificate
                )
            elif engine.driver == "libcloud":
                cloud = LibcloudOptions.from_options(engine.driver_options)
                drivers[engine.engine_id] = LibcloudDriver(
                    cloud, agent_address, settings.agent_token, certificate=certificate
                )
            else:
                nodes_dir = engine.driver_options.get("nodes_dir")
                if nodes_dir is not None:
                    drivers[engine.engine_id] = LocalDriver(
                        settings.home,
                        agent_address,
                        settings.agent_token,
                        Path(nodes_dir).expanduser(),
                        certificate=certificate,
                    )
                    continue
                if local is None:
                    local = LocalDriver(
                        settings.home, agent_address, settings.agent_token, certificate=certificate
                    )
                drivers[engine.engine_id] = local
        return drivers

    def _agent_socket(self) -> socket.socket:
        settings = self.settings
        address = settings.agent_listen
        remembered = settings.home / "agent_address"
        if address is None and remembered.exists():
            host, _, port = remembered.read_text().strip().rpartition(":")
            address = (host, int(port))
        if address is None:
            address = ("127.0.0.1", 0)
        sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
        return sock

    async def _node_loop(self, nodes: Nodes) -> None:
        while True:
            try:
                await nodes.tick()
            except Exception:
                log.exception("node loop pass failed")
            await asyncio.sleep(TICK)

    def _fatal(self, error: BaseException) -> None:
        if self.failure is None:
            log.critical("the store failed to commit; stopping: %s", error)
            self.failure = error
        self.stopped.set()

    async def aclose(self) -> None:
        """Stop the loops and close the store; agents keep running their processes."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for fake in self._fakes:
            fake.unbind()
        if self._hub is not None:
            await self._hub.aclose()
        if self._nodes is not None:
            await self._nodes.aclose()
        if self._events is not None:
            await self._events.aclose()
        if self.queue is not None:
            await self.queue.aclose()
        if self._committer is not None:
            await self._committer.aclose()
        if self._store is not None:
            self._store.close()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        self.stopped.set()


def lock_home(home: Path) -> int:
    """Hold ``home/dispatcher.lock`` while this dispatcher runs: two dispatchers on one
    store would each believe they own every process. Close the descriptor to let go."""
    fd = os.open(home / "dispatcher.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise Conflict(
            f"another dispatcher (pid {holder}) already runs on {home}; stop it first",
            field="home",
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd
