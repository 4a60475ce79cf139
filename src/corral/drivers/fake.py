"""The fake driver: a simulated cloud whose instances run simulated agents, in-process.

For tests and benchmarks, and to try corral without machines. An instance boots after
``boot_delay``; its agent then joins the dispatcher through the hub's ``attach`` (its node's
token checked and the handler asked as for a connection, but no socket and no handshake, so
10,000 nodes cost no file descriptors), sends heartbeats, and "runs" what it is launched: a
process is RUNNING at once (or, while every slot is busy, waits in a ``LaunchQueue`` as on a
real agent) and ends after the seconds given as the first argument of ``sleep`` (``sleep
infinity`` runs until killed), at once otherwise, with status 1 for ``false`` and 0 for the
rest.

Faults are knobs (:class:`FakeFaults`), in the manner of Arvados' stub driver: error rates on
create and destroy, a call rate above which calls are rate limited, a quota, a capacity and
capacity errors, boots that never join, nodes that die, processes that crash or cannot be
killed.
``hold()`` stops cloud calls until ``release()``; ``fail_next()`` makes the next calls
fail; ``lose()`` kills one instance. Simulated agents outlive a dispatcher that stops
(``unbind``) and join the next one (``bind``) with their inventory, as real agents do.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import random
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from corral.drivers.base import (
    CapacityUnavailable,
    CloudError,
    Instance,
    NodeSpec,
    QuotaExceeded,
    RateLimited,
)
from corral.drivers.wrappers import UNLIMITED
from corral.secretfile import node_token
from corral.wire.launch_queue import LaunchQueue
from corral.wire.messages import (
    EXITED,
    PROTOCOL_VERSION,
    RUNNING,
    Forget,
    Heartbeat,
    Hello,
    Kill,
    Launch,
    LogChunk,
    Message,
    ProcessReport,
    ReadLog,
    Refused,
    Shutdown,
    Welcome,
    Withdraw,
)

log = logging.getLogger("corral.drivers.fake")

SIGKILL = 9
SIGTERM = 15


@dataclass(frozen=True, slots=True)
class FakeFaults:
    """What goes wrong in the simulated cloud; every rate is a probability in [0, 1]."""

    boot_delay: float = 0.0
    create_error_rate: float = 0.0
    destroy_error_rate: float = 0.0
    #: cloud calls per second above which calls fail with RateLimited (0: no limit)
    calls_per_second: float = 0.0
    #: instances the account may have (0: no quota)
    quota: int = 0
    #: instances the provider can give (0: no limit)
    capacity: int = 0
    #: chance that a create finds no capacity for the instance type
    capacity_error_rate: float = 0.0
    #: created, but the agent never joins
    boot_failure_rate: float = 0.0
    #: chance per second that a running instance dies
    node_death_rate: float = 0.0
    #: chance that a process is killed (SIGKILL) before it ends on its own
    crash_rate: float = 0.0
    #: chance that a process ignores every signal (stuck in the kernel)
    unkillable_rate: float = 0.0
    seed: int | None = None


class AgentPort(Protocol):
    """The dispatcher's side of an attached agent (``hub.Attached``)."""

    def deliver(self, messages: list[Message]) -> None: ...

    def detach(self) -> None: ...


Connect = Callable[[Hello, str, "FakeAgent"], "AgentPort | str"]
"""The hub's ``attach``: an agent's Hello, its node's token (no wire carries it), itself."""


@dataclass(slots=True)
class FakeStatistics:
    #: create calls that reached the cloud, and those that made an instance
    create_calls: int = 0
    creates: int = 0
    destroys: int = 0
    errors: int = 0
    rate_limited: int = 0
    deaths: int = 0


class FakeDriver:
    """A simulated cloud; one object may serve several dispatcher runs (bind/unbind)."""

    limits = UNLIMITED

    def __init__(self, secret: str, faults: FakeFaults | None = None) -> None:
        """``secret`` is the dispatcher's agent secret: each agent says its node's token."""
        self.secret = secret
        self.faults = faults or FakeFaults()
        self.statistics = FakeStatistics()
        self._rng = random.Random(self.faults.seed)
        self._connect: Connect | None = None
        self._bound = asyncio.Event()
        self._agents: dict[str, FakeAgent] = {}
        self._calls: deque[float] = deque()
        self._held = False
        self._permits = 0
        self._released = asyncio.Event()
        self._pids = itertools.count(1000)
        self._deaths: asyncio.Task[None] | None = None
        self._failures: dict[str, int] = {}

    # --- the dispatcher's side ----------------------------------------------------------------

    def bind(self, connect: Connect) -> None:
        """Let agents join through ``connect`` (the hub's ``attach``)."""
        self._connect = connect
        self._bound.set()
        if self.faults.node_death_rate > 0 and self._deaths is None:
            self._deaths = asyncio.get_running_loop().create_task(self._kill_nodes())

    def unbind(self) -> None:
        """The dispatcher stops: agents wait for the next one, their processes run on."""
        self._connect = None
        self._bound.clear()
        for agent in self._agents.values():
            agent.close()
        if self._deaths is not None:
            self._deaths.cancel()
            self._deaths = None

    async def create(self, spec: NodeSpec, tags: Mapping[str, str]) -> Instance:
        await self._call("create")
        self.statistics.create_calls += 1
        faults = self.faults
        alive = sum(1 for a in self._agents.values() if not a.gone)
        if faults.quota and alive >= faults.quota:
            raise QuotaExceeded(f"quota of {faults.quota} instances reached")
        if faults.capacity and alive >= faults.capacity:
            raise CapacityUnavailable("no capacity left", instance_type_only=False)
        if self.chance(faults.capacity_error_rate):
            self.statistics.errors += 1
            raise CapacityUnavailable("no capacity for this type now (injected fault)")
        self._maybe_fail(faults.create_error_rate, "create")
        instance_id = f"fake-{spec.node_id}"
        agent = FakeAgent(self, instance_id, spec, dict(tags))
        self._agents[instance_id] = agent
        self.statistics.creates += 1
        if self._rng.random() >= faults.boot_failure_rate:
            agent.boot(faults.boot_delay)
        return Instance(instance_id, dict(tags))

    async def list(self) -> list[Instance]:
        await self._call("list")
        return [Instance(a.instance_id, dict(a.tags)) for a in self._agents.values() if not a.gone]

    async def last_reports(self, instance_id: str) -> Sequence[ProcessReport] | None:
        return None  # its simulated agents keep no journal

    async def destroy(self, instance_id: str) -> None:
        await self._call("destroy")
        self._maybe_fail(self.faults.destroy_error_rate, "destroy")
        agent = self._agents.pop(instance_id, None)
        if agent is not None:
            agent.stop()
            self.statistics.destroys += 1

    # --- what a test does to the cloud --------------------------------------------------------

    def hold(self) -> None:
        """Make cloud calls wait until :meth:`release`."""
        self._held = True
        self._released.clear()

    def release(self, calls: int | None = None) -> None:
        """Let ``calls`` held calls through, or all of them and stop holding."""
        if calls is None:
            self._held = False
        else:
            self._permits += calls
        self._released.set()

    def fail_next(self, operation: str, count: int = 1) -> None:
        """Make the next ``count`` calls of ``create`` or ``destroy`` fail (CloudError)."""
        if operation not in ("create", "destroy"):
            raise ValueError(f"only create and destroy can be made to fail, not {operation!r}")
        self._failures[operation] = self._failures.get(operation, 0) + count

    def lose(self, instance_id: str) -> None:
        """The instance dies: its agent and processes vanish with no word."""
        agent = self._agents.get(instance_id)
        if agent is not None:
            agent.die()
            self.statistics.deaths += 1

    def instances(self) -> dict[str, FakeAgent]:
        return dict(self._agents)

    # --- internals ----------------------------------------------------------------------------

    async def _call(self, what: str) -> None:
        while self._held and self._permits == 0:
            self._released.clear()
            await self._released.wait()
        if self._held:
            self._permits -= 1
        limit = self.faults.calls_per_second
        if limit > 0:
            now = time.time()
            while self._calls and self._calls[0] <= now - 1.0:
                self._calls.popleft()
            if len(self._calls) >= limit:
                self.statistics.rate_limited += 1
                raise RateLimited(f"{what}: over {limit:g} calls/s", self._calls[0] + 1.0)
            self._calls.append(now)

    def _maybe_fail(self, rate: float, what: str) -> None:
        if self._failures.get(what):
            self._failures[what] -= 1
            self.statistics.errors += 1
            raise CloudError(f"{what} failed (injected fault)")
        if rate and self._rng.random() < rate:
            self.statistics.errors += 1
            raise CloudError(f"{what} failed (injected fault)")

    async def _kill_nodes(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for agent in list(self._agents.values()):
                if agent.joined and self._rng.random() < self.faults.node_death_rate:
                    self.lose(agent.instance_id)

    async def wait_bound(self) -> Connect:
        """The current dispatcher's way in, once there is one."""
        while self._connect is None:
            await self._bound.wait()
        return self._connect

    def next_pid(self) -> int:
        return next(self._pids)

    def chance(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate

    def uniform(self, high: float) -> float:
        return self._rng.uniform(0.0, high)


class FakeAgent:
    """A simulated agent: joins, heartbeats, and plays its processes' lives by timers.

    It is also the hub's link to this agent (``peer``, ``closed``, ``send``, ``close``).
    Everything it says leaves in one batch per loop turn, as a real agent's does.
    """

    def __init__(
        self, driver: FakeDriver, instance_id: str, spec: NodeSpec, tags: dict[str, str]
    ) -> None:
        self._driver = driver
        self.instance_id = instance_id
        self.spec = spec
        self.tags = tags
        self.gone = False
        self.joined = False
        self._port: AgentPort | None = None
        self._inventory: dict[tuple[str, int], ProcessReport] = {}
        #: running rounds, with the timer that ends each (None: runs until killed)
        self._live: dict[tuple[str, int], asyncio.TimerHandle | None] = {}
        self._queue = LaunchQueue(spec.engine.slots)
        self._outbox: list[Message] = []
        #: told to shut down: it stays quiet until destroyed
        self._shut = False
        #: rounds that ignore Kill
        self._unkillable: set[tuple[str, int]] = set()
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> int:
        return len(self._live)

    def live_rounds(self) -> list[tuple[str, int]]:
        """The ``(upid, round)`` of what runs here now."""
        return list(self._live)

    # --- the link the hub holds ---------------------------------------------------------------

    @property
    def peer(self) -> str:
        return f"fake:{self.instance_id}"

    @property
    def closed(self) -> bool:
        return self._port is None

    def send(self, msg: Message) -> None:
        self._loop.call_soon(self._obey, msg)

    def close(self) -> None:
        """The dispatcher dropped us: join the next one (or this one again)."""
        self._port = None
        self.joined = False

    # --- life ---------------------------------------------------------------------------------

    def boot(self, delay: float) -> None:
        self._task = self._loop.create_task(self._run(delay))

    def stop(self) -> None:
        """Destroyed: everything on it ends, the dispatcher is told nothing more."""
        self.die()

    def die(self) -> None:
        self.gone = True
        for timer in self._live.values():
            if timer is not None:
                timer.cancel()
        self._live.clear()
        self._queue = LaunchQueue(self.spec.engine.slots)
        if self._task is not None:
            self._task.cancel()
        port, self._port = self._port, None
        self.joined = False
        if port is not None:
            port.detach()

    async def _run(self, delay: float) -> None:
        """Join, heartbeat while joined, join again when dropped; until shut down or gone."""
        await asyncio.sleep(delay)
        period = max(self.spec.engine.heartbeat_period, 0.01)
        while not self.gone and not self._shut:
            connect = await self._driver.wait_bound()
            token = node_token(self._driver.secret, self.spec.node_id)
            port = connect(self._hello(), token, self)
            if isinstance(port, str):
                log.warning("fake agent %s refused: %s", self.spec.node_id, port)
                return
            self._port = port
            self.joined = True
            while self._port is not None:
                self._say(Heartbeat(time.time(), self.running))
                await asyncio.sleep(period)
            await asyncio.sleep(0.05)  # a real agent backs off before it dials again

    def _hello(self) -> Hello:
        return Hello(
            node_id=self.spec.node_id,
            engine=self.spec.engine.engine_id,
            hostname=self.instance_id,
            slots=self.spec.engine.slots,
            labels=dict(self.spec.engine.labels),
            pid=0,
            version=PROTOCOL_VERSION,
            inventory=[*self._inventory.values(), *self._queue.reports()],
        )

    def _say(self, msg: Message) -> None:
        if self._port is None:
            return
        if not self._outbox:
            self._loop.call_soon(self._flush)
        self._outbox.append(msg)

    def _flush(self) -> None:
        batch, self._outbox = self._outbox, []
        if self._port is not None and batch:
            self._port.deliver(batch)

    # --- commands -----------------------------------------------------------------------------

    def _obey(self, msg: Message) -> None:
        if self.gone:
            return
        if isinstance(msg, Launch):
            self._launch(msg)
        elif isinstance(msg, Kill):
            self._kill((msg.upid, msg.round))
        elif isinstance(msg, Withdraw):
            key = (msg.upid, msg.round)
            if not self._drop_queued(key) and key in self._inventory:
                self._say(self._inventory[key])
        elif isinstance(msg, Forget):
            self._queue.drop((msg.upid, msg.round))
            if (msg.upid, msg.round) not in self._live:
                self._inventory.pop((msg.upid, msg.round), None)
        elif isinstance(msg, ReadLog):
            self._say(LogChunk(msg.request_id, b"", msg.offset, 0, None))
        elif isinstance(msg, Shutdown):
            self._shut_down()
        elif isinstance(msg, Refused):
            self.close()
        elif not isinstance(msg, Welcome):
            log.warning("fake agent %s ignores %s", self.spec.node_id, type(msg).__name__)

    def _drop_queued(self, key: tuple[str, int]) -> bool:
        report = self._queue.drop(key)
        if report is not None:
            self._inventory[key] = report
            self._say(report)
        return report is not None

    def _kill(self, key: tuple[str, int]) -> None:
        if self._drop_queued(key) or key in self._unkillable:
            return
        if key in self._live:
            self._end(key, None, SIGTERM)
        elif key in self._inventory:
            self._say(self._inventory[key])  # already over: say how it ended

    def _shut_down(self) -> None:
        self._shut = True
        for report in self._queue.drop_all():
            self._inventory[(report.upid, report.round)] = report
            self._say(report)
        for key in list(self._live):
            self._end(key, None, SIGTERM)
        self._flush()
        port, self._port = self._port, None
        self.joined = False
        if port is not None:
            port.detach()

    def _launch(self, msg: Launch) -> None:
        key = (msg.upid, msg.round)
        known = self._inventory.get(key)
        if known is not None:
            self._say(known)
            return
        self._queue.add(msg)
        self._start_due()

    def _start_due(self) -> None:
        while (launch := self._queue.next_due(len(self._live))) is not None:
            self._start(launch)

    def _start(self, msg: Launch) -> None:
        key = (msg.upid, msg.round)
        now = time.time()
        report = ProcessReport(
            msg.upid, msg.round, RUNNING, self._driver.next_pid(), None, None, None, now, None
        )
        self._inventory[key] = report
        self._say(report)
        program = os.path.basename(msg.exec)
        runs_for = _duration(program, msg.argv)
        code = 1 if program == "false" else 0
        if self._driver.chance(self._driver.faults.unkillable_rate):
            self._unkillable.add(key)
        if self._driver.chance(self._driver.faults.crash_rate):
            runs_for = self._driver.uniform(runs_for if math.isfinite(runs_for) else 1.0)
            self._live[key] = self._loop.call_later(runs_for, self._end, key, None, SIGKILL)
        elif math.isfinite(runs_for):
            self._live[key] = self._loop.call_later(runs_for, self._end, key, code, None)
        else:
            self._live[key] = None

    def _end(self, key: tuple[str, int], code: int | None, signal: int | None) -> None:
        if key not in self._live:
            return
        timer = self._live.pop(key)
        if timer is not None:
            timer.cancel()
        report = self._inventory.get(key)
        if report is None:
            return
        ended = replace(report, status=EXITED, exit_code=code, signal=signal, ended_at=time.time())
        self._inventory[key] = ended
        self._say(ended)
        self._start_due()


def _duration(program: str, argv: list[str]) -> float:
    if program != "sleep" or not argv:
        return 0.0
    try:
        seconds = float(argv[0])
    except ValueError:
        return 0.0
    return seconds if seconds >= 0 else 0.0
