"""What both clients share: discovery, request building, response and event decoding.

Discovery, in order:

- URL: the ``url`` argument, ``CORRAL_URL``, the file ``<home>/url`` (where ``corral serve``
  writes its address), then ``http://127.0.0.1:7480``. It may list several dispatchers of one
  store, comma-separated: see `Dispatchers`;
- token: the ``token`` argument, ``CORRAL_TOKEN``, then the file ``<home>/token``;
- what an ``https`` URL is trusted by: the certificates in the ``ca`` argument's file, else
  in ``CORRAL_CA``'s; else the system's CAs plus ``<home>/tls_certificate.pem`` (the
  certificate ``corral serve --tls`` serves with), if there is one;
- home: ``CORRAL_HOME``, else ``~/.corral``.

Each operation is a function returning a :class:`Call` (method, path, query, JSON body),
so ``Client`` and ``AsyncClient`` differ only in how they send it. A non-2xx answer is
decoded back into the ``corral.errors`` class the server raised.
"""

from __future__ import annotations

import json
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from corral.errors import (
    ERROR_CLASSES,
    CorralError,
    InvalidRequest,
    NotFound,
    Unauthorized,
    Unavailable,
)
from corral.tls import CERTIFICATE_FILE, read_certificates, trusting

DEFAULT_URL = "http://127.0.0.1:7480"
#: the header of a standby dispatcher's answers (``corral.api.standby``)
ROLE_HEADER = "Corral-Role"
#: one long poll of wait_process; below the server's cap and any proxy's idle timeout
WAIT_CHUNK = 30.0
#: the server sends a keep-alive every 15 s, so this much silence means the link is dead
EVENTS_READ_TIMEOUT = 60.0

Params = list[tuple[str, str | int | float | bool | None]]
_BY_STATUS: dict[int, type[CorralError]] = {
    401: Unauthorized,
    403: ERROR_CLASSES["Forbidden"],
    404: NotFound,
    408: ERROR_CLASSES["WaitTimeout"],
    409: ERROR_CLASSES["Conflict"],
    422: InvalidRequest,
    503: Unavailable,
    507: ERROR_CLASSES["StoreFull"],
}


def corral_home() -> Path:
    home = os.environ.get("CORRAL_HOME")
    return Path(home).expanduser() if home else Path.home() / ".corral"


def _read_home_file(name: str) -> str | None:
    try:
        text = (corral_home() / name).read_text().strip()
    except OSError:
        return None
    return text or None


def discover_url(url: str | None = None) -> str:
    found = url or os.environ.get("CORRAL_URL") or _read_home_file("url") or DEFAULT_URL
    return ",".join(split_urls(found))


def split_urls(text: str) -> list[str]:
    """The URLs of a comma-separated list, without trailing slashes."""
    urls = [part.strip().rstrip("/") for part in text.split(",")]
    return [url for url in urls if url] or [DEFAULT_URL]


class Dispatchers:
    """The dispatchers a client knows, and which of them to ask first.

    With several URLs (dispatchers sharing a PostgreSQL store, one active), a request goes
    to the one that answered last; the next ones are asked in turn when it cannot be
    reached or answers that it stands by (``Corral-Role: standby``). A request that may have
    reached a dispatcher before failing is not sent again unless it only reads (GET), so
    nothing is done twice. When no dispatcher answers, `Unavailable` names each one's
    trouble.
    """

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self._current = 0
        self._troubles: list[CorralError] = []

    @property
    def current(self) -> str:
        return self.urls[self._current]

    def order(self) -> list[str]:
        """Every URL, the one that answered last first; starts a new request's tally."""
        self._troubles = []
        n = len(self.urls)
        return [self.urls[(self._current + i) % n] for i in range(n)]

    def unreachable(self, call: Call, url: str, exc: httpx.TransportError) -> None:
        """Note that ``url`` could not answer; raise if the request must not be retried."""
        error = unavailable(url, exc)
        sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
        if len(self.urls) == 1 or (sent and call.method != "GET"):
            raise error
        self._troubles.append(error)

    def standing_by(self, url: str, response: httpx.Response) -> bool:
        """Whether ``response`` comes from a standby, and another dispatcher is to be asked."""
        if len(self.urls) == 1 or response.headers.get(ROLE_HEADER) != "standby":
            return False
        self._troubles.append(Unavailable(f"{url}: {error_from(response).message}"))
        return True

    def answered(self, url: str) -> None:
        self._current = self.urls.index(url)

    def none_active(self) -> Unavailable:
        """The error once every dispatcher was asked in vain."""
        troubles = "; ".join(error.message for error in self._troubles)
        return Unavailable(f"no active corral dispatcher among {len(self.urls)}: {troubles}")


def discover_token(token: str | None = None) -> str | None:
    return token or os.environ.get("CORRAL_TOKEN") or _read_home_file("token")


def discover_trust(
    urls: list[str], ca: str | os.PathLike[str] | None = None
) -> ssl.SSLContext | bool:
    """What the client verifies ``https`` dispatchers with (httpx's ``verify``); an unusable
    ``ca`` file is an :class:`InvalidRequest` naming it."""
    if not any(url.startswith("https:") for url in urls):
        return True  # nothing to verify: no context to build
    given = ca or os.environ.get("CORRAL_CA")
    if given:
        field = "ca" if ca else "CORRAL_CA"
        return trusting(read_certificates(Path(given).expanduser(), field))
    published = _read_home_file(CERTIFICATE_FILE)
    if published is None:
        return True
    try:
        return trusting(published, system=True)
    except ssl.SSLError:
        return True  # not a certificate after all: the system's CAs alone


def headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP request of an operation, independent of sync or async sending."""

    method: str
    path: str
    params: Params = field(default_factory=list)
    json: Any = None
    #: extra seconds of read timeout this call needs beyond the client's (a long poll)
    extra_timeout: float = 0.0


def _seg(value: str) -> str:
    return quote(value, safe="")


def _drop_none(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def create_definition(
    definition_id: str,
    definition_type: str,
    executable: dict[str, Any],
    name: str | None,
    description: str | None,
) -> Call:
    body = _drop_none(name=name, description=description)
    body.update(definition_id=definition_id, definition_type=definition_type, executable=executable)
    return Call("POST", "/definitions", json=body)


def update_definition(
    definition_id: str,
    definition_type: str,
    executable: dict[str, Any],
    name: str | None,
    description: str | None,
) -> Call:
    body = _drop_none(name=name, description=description)
    body.update(definition_type=definition_type, executable=executable)
    return Call("PUT", f"/definitions/{_seg(definition_id)}", json=body)


def describe_definition(definition_id: str) -> Call:
    return Call("GET", f"/definitions/{_seg(definition_id)}")


def remove_definition(definition_id: str) -> Call:
    return Call("DELETE", f"/definitions/{_seg(definition_id)}")


def list_definitions() -> Call:
    return Call("GET", "/definitions")


def create_process(upid: str, definition_id: str, name: str | None) -> Call:
    body = _drop_none(upid=upid, definition_id=definition_id, name=name)
    return Call("POST", "/processes", json=body)


def schedule_process(upid: str, **parameters: Any) -> Call:
    """``parameters`` are schedule_process's keyword arguments; None means "not given"."""
    return Call("POST", f"/processes/{_seg(upid)}/schedule", json=_drop_none(**parameters))


def schedule_processes(processes: list[dict[str, Any]], request_id: str | None = None) -> Call:
    items = [_drop_none(**item) for item in processes]
    return Call(
        "POST", "/processes/schedule", json=_drop_none(processes=items, request_id=request_id)
    )


def describe_process(upid: str) -> Call:
    return Call("GET", f"/processes/{_seg(upid)}")


def describe_processes() -> Call:
    return Call("GET", "/processes")


def process_history(upid: str) -> Call:
    return Call("GET", f"/processes/{_seg(upid)}/history")


def audit_log(limit: int, before: int | None, target: str | None) -> Call:
    params: Params = [("limit", limit)]
    if before is not None:
        params.append(("before", before))
    if target is not None:
        params.append(("target", target))
    return Call("GET", "/audit", params=params)


def restart_process(upid: str) -> Call:
    return Call("POST", f"/processes/{_seg(upid)}/restart")


def terminate_process(upid: str) -> Call:
    return Call("POST", f"/processes/{_seg(upid)}/terminate")


def wait_process(upid: str, states: list[str] | None, timeout: float) -> Call:
    params: Params = [("state", state) for state in states or ()]
    params.append(("timeout", timeout))
    return Call("GET", f"/processes/{_seg(upid)}/wait", params=params, extra_timeout=timeout)


def wait_chunk(remaining: float) -> float:
    return min(max(remaining, 0.0), WAIT_CHUNK)


def wait_timed_out(upid: str, states: list[str] | None, timeout: float) -> CorralError:
    target = " or ".join(states) if states else "a terminal state"
    return ERROR_CLASSES["WaitTimeout"](
        f"process {upid} did not reach {target} within {timeout:g}s"
    )


def read_log(upid: str, stream: str, offset: int, limit: int) -> Call:
    params: Params = [("stream", stream), ("offset", offset), ("limit", limit)]
    return Call("GET", f"/processes/{_seg(upid)}/logs", params=params)


def dump() -> Call:
    return Call("GET", "/dump")


def list_nodes() -> Call:
    return Call("GET", "/nodes")


def describe_node(node_id: str) -> Call:
    return Call("GET", f"/nodes/{_seg(node_id)}")


def node_action(node_id: str, action: str) -> Call:
    return Call("POST", f"/nodes/{_seg(node_id)}/{_seg(action)}")


def list_engines() -> Call:
    return Call("GET", "/engines")


def health() -> Call:
    return Call("GET", "/health")


def events(upid: str | None) -> Call:
    return Call("GET", "/events", params=[("upid", upid)] if upid else [])


def events_timeout(timeout: float) -> httpx.Timeout:
    return httpx.Timeout(timeout, read=EVENTS_READ_TIMEOUT)


def decode(response: httpx.Response, has_token: bool = True) -> Any:
    """The JSON result of a 2xx answer (None when empty); otherwise raise its error."""
    if response.is_success:
        return response.json() if response.content else None
    raise error_from(response, has_token)


def error_from(response: httpx.Response, has_token: bool = True) -> CorralError:
    try:
        body = response.json()["error"]
        kind, message, where = body["type"], str(body["message"]), body.get("field")
    except (ValueError, KeyError, TypeError):
        # not our error body: a proxy, or another server on the port
        fallback = _BY_STATUS.get(response.status_code, CorralError)
        text = response.text.strip()[:200] or response.reason_phrase
        return fallback(f"HTTP {response.status_code} from {response.url}: {text}")
    cls = ERROR_CLASSES.get(kind) or _BY_STATUS.get(response.status_code, CorralError)
    if cls is Unauthorized and not has_token:
        where_from = corral_home() / "token"
        message += f" (this client found no token: none given, no CORRAL_TOKEN, no {where_from})"
    return cls(message, field=where if isinstance(where, str) else None)


def unavailable(url: str, exc: httpx.TransportError) -> Unavailable:
    """The error for a request that never got an answer."""
    if isinstance(exc, httpx.TimeoutException):
        return Unavailable(f"no answer from the corral dispatcher at {url} in time ({exc!r})")
    if "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return Unavailable(
            f"the corral dispatcher at {url} presents a certificate this client does not trust"
            f" ({exc}); give its certificate with --ca FILE or CORRAL_CA (corral serve leaves"
            f" it in its home's {CERTIFICATE_FILE})"
        )
    if url.startswith("http:") and isinstance(exc, httpx.RemoteProtocolError):
        return Unavailable(
            f"the corral dispatcher at {url} hung up ({exc}); if it serves TLS"
            " (corral serve --tls), use its https:// URL"
        )
    if "WRONG_VERSION_NUMBER" in str(exc) or "RECORD_LAYER_FAILURE" in str(exc):
        return Unavailable(
            f"the corral dispatcher at {url} does not speak TLS ({exc}); try its http:// URL"
        )
    return Unavailable(
        f"cannot reach the corral dispatcher at {url} ({exc or type(exc).__name__}); "
        "is it running? start one with `corral serve`"
    )


class EventDecoder:
    """Turns Server-Sent Event lines into event dicts; ``feed`` one line at a time."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._event = ""

    def feed(self, line: str) -> dict[str, Any] | None:
        """Return the event a blank line completes; raise the error an error event carries."""
        if line.startswith(":"):
            return None  # a comment: the server's keep-alive
        if line:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._event = value
            return None
        data, kind = "\n".join(self._data), self._event
        self._data, self._event = [], ""
        if not data:
            return None
        payload = json.loads(data)
        if kind == "error":
            error = payload.get("error", {})
            cls = ERROR_CLASSES.get(error.get("type"), CorralError)
            raise cls(str(error.get("message", "event stream failed")), field=error.get("field"))
        return payload if isinstance(payload, dict) else {"data": payload}
