"""Several dispatchers on one PostgreSQL store: one active, the others standing by.

``corral serve`` on a PostgreSQL store runs a `Standby`, which goes round this loop:

1. Stand by. Every third of the lease's duration, say in the store that this dispatcher is
   alive (its API URL and agent address, in ``dispatchers``) and read the lease; report who
   is active to the API (a standby answers 503, naming the active dispatcher), and take no
   agents (the agent port is closed, so agents dial the next dispatcher of their list).
2. When the lease has expired by the database's clock, take it: the epoch grows by one.
3. Start a `Runtime` fenced at that epoch. It loads the store and reconciles exactly as a
   restarted dispatcher does: nodes are unknown until their agents re-join with their
   inventories, and the syncer settles every process.
4. While active, renew the lease every third of its duration and tell the agents
   (``Renewed``, with the current list of dispatchers). The lease is good until the last
   successful renewal *began* plus its duration, by this dispatcher's monotonic clock,
   which is never later than the database's expiry. If that moment passes without a renewal,
   or a renewal finds the lease taken, the runtime stops at once (fenced: no more mapping,
   syncing or commits; its agents are disconnected) and the dispatcher stands by again.
   Its late commits would fail anyway (``PostgresStore.fence``), and agents refuse a
   dispatcher of an older epoch.
5. On a clean exit, release the lease, so a standby takes over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from corral.dispatcher.runtime import Runtime, RuntimeSettings, lock_home
from corral.dispatcher.service import Dispatcher
from corral.errors import Conflict, CorralError, StoreError
from corral.store.lease import Holder, Member, PostgresLease
from corral.tls import chain_top

log = logging.getLogger("corral.standby")

#: the lease's duration unless configured: how long a dead dispatcher goes unnoticed
LEASE_DURATION = 3.0
#: dispatchers unseen for this many lease durations are dropped from the agents' list
MEMBER_AGE = 10


@dataclass(frozen=True, slots=True)
class Role:
    """What the API says of this dispatcher."""

    active: bool
    #: the lease's epoch (this dispatcher's when active, else the one it last saw)
    epoch: int | None = None
    #: the API URL of the active dispatcher, when known
    active_url: str | None = None
    #: the active dispatcher's lease id
    holder: str | None = None


class Standby:
    """A dispatcher that shares its PostgreSQL store: active while it holds the lease.

    ``on_active`` is called with each new term's `Dispatcher`, ``on_role`` whenever the
    role (or what is known of the active dispatcher) changes. `run` returns an exit code.
    """

    def __init__(
        self,
        settings: RuntimeSettings,
        api_url: str,
        on_active: Callable[[Dispatcher], None],
        on_role: Callable[[Role], None],
        *,
        lease_duration: float = LEASE_DURATION,
    ) -> None:
        assert settings.store_url is not None
        self.settings = settings
        self._duration = lease_duration
        self._period = lease_duration / 3
        self._api_url = api_url
        self._on_active = on_active
        self._on_role = on_role
        self.me = ""
        self._lease: PostgresLease | None = None
        self._stopping = asyncio.Event()
        self._role = Role(active=False)
        self._outage = False
        self.runtime: Runtime | None = None
        #: every epoch this dispatcher held, in order
        self.terms: list[int] = []
        #: the top of its certificate chain, which every dispatcher of the store must share
        self._tls = chain_top(settings.tls.certificate) if settings.tls is not None else None

    def stop(self) -> None:
        """End `run`: stop the runtime, release the lease, leave the list."""
        self._stopping.set()

    async def run(self) -> int:
        home = self.settings.home
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = lock_home(home)
        try:
            self.me = _dispatcher_id(home)
            address = _agent_address(self.settings)
            self.settings = replace(self.settings, agent_listen=address, home_locked=True)
            agents = f"{address[0]}:{address[1]}"
            doc = {"api": self._api_url, "agents": agents, "tls": self._tls}
            assert self.settings.store_url is not None
            # a call slower than half a lease is of no use: the lease is gone by then
            timeout = self._duration / 2
            self._lease = PostgresLease(self.settings.store_url, self.me, doc, timeout=timeout)
            log.info("dispatcher %s standing by; agents will dial %s", self.me, agents)
            return await self._serve(self._lease)
        finally:
            if self._lease is not None:
                with contextlib.suppress(StoreError):
                    await self._lease.leave()
                await self._lease.aclose()
            os.close(lock)

    async def _serve(self, lease: PostgresLease) -> int:
        while not self._stopping.is_set():
            taken = await self._stand_by(lease)
            if taken is None:
                return 0
            epoch, since, peers = taken
            code = await self._term(lease, epoch, since, peers)
            if code is not None:
                return code
        return 0

    # -- standing by --------------------------------------------------------------------

    async def _stand_by(self, lease: PostgresLease) -> tuple[int, float, list[str]] | None:
        """Poll until the lease is ours: its epoch, when taking it began, the peers."""
        while not self._stopping.is_set():
            try:
                members = await lease.register(MEMBER_AGE * self._duration)
                self._refuse_other_tls(members)
                peers = self._peers(members)
                held = await lease.read()
                # its own lease is left over from a run of this dispatcher that is gone (the
                # home's lock says so): taken back at once, in a new epoch
                if held is None or held.expired or held.holder == self.me:
                    since = time.monotonic()
                    epoch = await lease.acquire(self._duration)
                    if epoch is not None:
                        return epoch, since, peers
                    held = await lease.read()
                self._outage = False
                self._set_role(self._standby_role(held))
            except StoreError as exc:
                self._store_trouble(exc)
            await self._pause(self._period)
        return None

    def _store_trouble(self, exc: StoreError) -> None:
        # one line per outage, not one per poll
        if not self._outage:
            log.warning("cannot reach the lease: %s", exc.message)
        self._outage = True

    # -- one term as the active dispatcher --------------------------------------------------

    async def _term(
        self, lease: PostgresLease, epoch: int, since: float, peers: list[str]
    ) -> int | None:
        """Run a runtime while the lease is ours; None to stand by again, else an exit code."""
        log.info("took the lease in epoch %d; loading the store", epoch)
        settings = replace(
            self.settings, epoch=epoch, lease_duration=self._duration, peers=tuple(peers)
        )
        runtime = self.runtime = Runtime(settings)
        # renewing starts at once: loading a large store may take longer than a lease
        holding = asyncio.create_task(self._hold(lease, runtime, epoch, since + self._duration))
        stopping = asyncio.create_task(self._stopping.wait())
        exit_code: int | None = None
        try:
            if await self._start(runtime, holding, stopping):
                failed = asyncio.create_task(runtime.stopped.wait())
                await asyncio.wait({holding, stopping, failed}, return_when=asyncio.FIRST_COMPLETED)
                failed.cancel()
        except CorralError as exc:
            log.error("could not start in epoch %d: %s", epoch, exc.message)
            exit_code = 1
        finally:
            for task in (holding, stopping):
                task.cancel()
            # fenced: the role goes first, so the API hands the runtime no more requests
            self._set_role(Role(False, epoch))
            await runtime.aclose()
            self.runtime = None
        if holding.done() and not holding.cancelled():
            log.warning("deposed in epoch %d: %s; standing by", epoch, holding.result())
            return None
        await self._release(lease, epoch)
        if exit_code is None and self._stopping.is_set():
            exit_code = 0
        if exit_code is None:
            log.error("the runtime of epoch %d stopped (%s); standing by", epoch, runtime.failure)
        return exit_code

    async def _start(
        self, runtime: Runtime, holding: asyncio.Task[str], stopping: asyncio.Task[bool]
    ) -> bool:
        """Start ``runtime`` unless the lease is lost (or a stop asked) first."""
        starting = asyncio.create_task(runtime.start())
        await asyncio.wait({starting, holding, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, CorralError):
                await starting
            return False
        dispatcher = starting.result()
        epoch = runtime.settings.epoch
        self.terms.append(epoch or 0)
        self._on_active(dispatcher)
        self._set_role(Role(True, epoch, self._api_url, self.me))
        log.info("active in epoch %s", epoch)
        return True

    async def _hold(
        self, lease: PostgresLease, runtime: Runtime, epoch: int, valid_until: float
    ) -> str:
        """Renew until the lease is lost; why it was."""
        peers = list(runtime.settings.peers)
        while True:
            await asyncio.sleep(max(0.0, min(self._period, valid_until - time.monotonic())))
            now = time.monotonic()
            if now >= valid_until:
                return f"the lease was not renewed within {self._duration:g}s"
            try:
                if not await lease.renew(epoch, self._duration, within=valid_until - now):
                    return "another dispatcher took the lease"
            except StoreError as exc:
                log.warning("could not renew the lease of epoch %d: %s", epoch, exc.message)
                continue
            valid_until = now + self._duration
            # the agents hear of it at once; the list of dispatchers may lag one renewal
            runtime.renewed(peers)
            with contextlib.suppress(StoreError):
                peers = self._peers(await lease.register(MEMBER_AGE * self._duration))

    async def _release(self, lease: PostgresLease, epoch: int) -> None:
        try:
            await lease.release(epoch)
        except StoreError as exc:
            log.warning("could not release the lease (it expires by itself): %s", exc.message)

    # -- helpers ----------------------------------------------------------------------------

    def _refuse_other_tls(self, members: list[Member]) -> None:
        """Agents follow whichever dispatcher is active, trusting the certificate they were
        handed: a dispatcher whose certificate they would refuse must not stand by."""
        for member in members:
            theirs = member.doc.get("tls", self._tls)  # an older dispatcher does not say
            if member.key == self.me or theirs == self._tls:
                continue
            if theirs is None:
                differs = "serves no TLS, and this one does"
            elif self._tls is None:
                differs = "serves TLS, and this one does not"
            else:
                differs = "serves another TLS certificate than this one"
            raise Conflict(
                f"dispatcher {member.key} of this store {differs}: agents and clients handed"
                " one would not follow a takeover to the other; give every dispatcher the"
                " same --tls-cert and --tls-key (or TLS to none)",
                field="tls",
            )

    def _peers(self, members: list[Member]) -> list[str]:
        """The other dispatchers' agent addresses."""
        found = (m.doc.get("agents") for m in members if m.key != self.me)
        return [a for a in found if isinstance(a, str)]

    def _standby_role(self, held: Holder | None) -> Role:
        # a lease still held by this dispatcher (it fenced itself early) has no active holder
        if held is None or held.expired or held.holder == self.me:
            return Role(False, held.epoch if held else None)
        url = held.doc.get("api")
        return Role(False, held.epoch, url if isinstance(url, str) else None, held.holder)

    def _set_role(self, role: Role) -> None:
        if role != self._role:
            self._role = role
            self._on_role(role)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


def _dispatcher_id(home: Path) -> str:
    """This dispatcher's name in the lease: its host's, and a random part kept in its home
    (each dispatcher needs a home of its own: never copy ``dispatcher_id``)."""
    path = home / "dispatcher_id"
    try:
        part = path.read_text().strip()
    except FileNotFoundError:
        part = ""
    if not part:
        part = os.urandom(4).hex()
        path.write_text(part + "\n")
    return f"{socket.gethostname()}-{part}"


def _agent_address(settings: RuntimeSettings) -> tuple[str, int]:
    """Where agents will dial this dispatcher once active: known before it is, so that the
    active one can tell its agents (the port stays closed while standing by)."""
    asked = settings.agent_listen
    if asked is not None and asked[1] != 0:
        return asked
    remembered = settings.home / "agent_address"
    if asked is None and remembered.exists():
        text, _, port = remembered.read_text().strip().rpartition(":")
        return text.strip("[]"), int(port)
    host = asked[0] if asked is not None else "127.0.0.1"
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        free = int(sock.getsockname()[1])
    remembered.write_text(f"{host}:{free}\n")
    return host, free
