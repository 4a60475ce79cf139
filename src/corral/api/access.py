"""Who is asking, and what they may do: tokens, roles, principals and dashboard sessions.

Two tokens open the API: the API token (``HOME/token``), which may do anything, and the
read-only token (``HOME/readonly_token``), which may look but not act, and sees secrets in
configurations and environments masked (``api.redact``). Either one is sent as a bearer
token, or given once to the dashboard's log-in page, which opens a *session*: a random id
in an HttpOnly, SameSite=Strict cookie, and a CSRF token the page sends back in the
``X-CSRF-Token`` header of every action. Sessions live in the dispatcher's memory only: a
restart logs everyone out. A session ends after :data:`IDLE_TIMEOUT` seconds without a
request, or :data:`LIFETIME` seconds after log-in, whichever comes first.

Each principal has a name for the audit log ("api token from 127.0.0.1", "ui session 3fa2b1
of the read-only token from ::1"); a session's label is random and independent of its
cookie, so the log never holds anything that opens the API.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from corral.errors import CorralError

#: the header that carries a session's CSRF token with every action
CSRF_HEADER = "x-csrf-token"
#: seconds a session lives without a request
IDLE_TIMEOUT = 3600.0
#: seconds a session lives at most
LIFETIME = 12 * 3600.0
#: sessions kept at once; beyond it the least recently used one ends
MAX_SESSIONS = 1000


class Role(StrEnum):
    READ_WRITE = "read-write"
    READ_ONLY = "read-only"

    @property
    def token_name(self) -> str:
        return "api token" if self is Role.READ_WRITE else "read-only token"


@dataclass(slots=True)
class Session:
    """One log-in to the dashboard."""

    #: random and short, for the audit log; unrelated to the cookie
    label: str
    role: Role
    #: the page sends it back with each action
    csrf: str
    address: str
    created: float
    seen: float

    @property
    def name(self) -> str:
        return f"ui session {self.label} of the {self.role.token_name}"


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of one request."""

    role: Role
    address: str
    #: set when the request was authenticated by the session cookie (CSRF then applies)
    session: Session | None = None

    @property
    def can_act(self) -> bool:
        return self.role is Role.READ_WRITE

    @property
    def actor(self) -> str:
        """Who this is, as the audit log says it."""
        who = self.session.name if self.session is not None else self.role.token_name
        return f"{who} from {self.address}"


class Tokens:
    """The tokens that open the API, compared in constant time."""

    def __init__(self, read_write: str, read_only: str | None = None) -> None:
        if not read_write:
            raise CorralError("the API token must not be empty")
        if read_only is not None and (not read_only or read_only == read_write):
            raise CorralError("the read-only token must be set and differ from the API token")
        self._tokens = [(read_write.encode(), Role.READ_WRITE)]
        if read_only is not None:
            self._tokens.append((read_only.encode(), Role.READ_ONLY))

    def role_of(self, given: bytes) -> Role | None:
        """The role ``given`` opens, or None; every token is compared, whatever matches."""
        found = None
        for token, role in self._tokens:
            # bytes on both sides: compare_digest refuses non-ASCII str, which a client controls
            if hmac.compare_digest(given, token):
                found = role
        return found


class Sessions:
    """The dashboard's open sessions, keyed by a hash of their cookie."""

    def __init__(
        self,
        idle_timeout: float = IDLE_TIMEOUT,
        lifetime: float = LIFETIME,
        limit: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_timeout = idle_timeout
        self.lifetime = lifetime
        self._limit = limit
        self._clock = clock
        self._open: dict[str, Session] = {}

    def open(self, role: Role, address: str) -> tuple[str, Session]:
        """A new session; returns the cookie's value (shown only here) and the session."""
        now = self._clock()
        cookie = secrets.token_urlsafe(32)
        session = Session(
            label=secrets.token_hex(3),
            role=role,
            csrf=secrets.token_urlsafe(32),
            address=address,
            created=now,
            seen=now,
        )
        self._open[_key(cookie)] = session
        if len(self._open) > self._limit:
            oldest = min(self._open, key=lambda k: self._open[k].seen)
            del self._open[oldest]
        return cookie, session

    def get(self, cookie: str) -> Session | None:
        """The live session of ``cookie`` (its idle time starts again), or None."""
        key = _key(cookie)
        session = self._open.get(key)
        if session is None:
            return None
        now = self._clock()
        if now - session.seen > self.idle_timeout or now - session.created > self.lifetime:
            del self._open[key]
            return None
        session.seen = now
        return session

    def close(self, cookie: str) -> Session | None:
        return self._open.pop(_key(cookie), None)

    def __len__(self) -> int:
        return len(self._open)


def _key(cookie: str) -> str:
    # a hash, so that looking a session up takes no time that depends on a secret's prefix
    return hashlib.sha256(cookie.encode(errors="replace")).hexdigest()


def csrf_matches(session: Session, given: bytes | None) -> bool:
    return given is not None and hmac.compare_digest(given, session.csrf.encode())


def cookie_name(token: str) -> str:
    """The session cookie's name, distinct per dispatcher: browsers keep cookies per host,
    not per port, so two dispatchers on one host must not overwrite each other's."""
    digest = hashlib.sha256(b"corral dashboard cookie\0" + token.encode()).hexdigest()
    return f"corral_session_{digest[:8]}"
