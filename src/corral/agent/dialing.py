"""How the agent reaches a dispatcher: its addresses, the backoff between passes over them,
and the socket options that notice a vanished one in time."""

from __future__ import annotations

import contextlib
import random
import socket
from collections.abc import Callable

from corral.wire.codec import Connection

Address = tuple[str, int]


def parse_address(text: str) -> Address | None:
    """``HOST:PORT`` (``[::1]:7000`` for an IPv6 host) as a pair; None if it is not one."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        return None
    return host.strip("[]"), int(port)


class Backoff:
    """Exponential delays with jitter: each in [d/2, d], d doubling from start to cap."""

    def __init__(self, start: float, cap: float, rand: Callable[[], float] = random.random) -> None:
        self._start = start
        self._cap = cap
        self._rand = rand
        self._next = start

    def next(self) -> float:
        delay = self._next
        self._next = min(self._cap, delay * 2)
        return delay * (0.5 + self._rand() / 2)

    def reset(self) -> None:
        self._next = self._start


def tune_socket(conn: Connection, link_timeout: float) -> None:
    """Notice a silently vanished dispatcher within ``link_timeout`` (heartbeats always
    wait for an acknowledgement) or about a minute when idle, instead of many."""
    sock = conn.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):  # not TCP: keep the defaults
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        # Unacknowledged data (heartbeats to a dead peer) also fails the connection in time.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(link_timeout * 1000))
