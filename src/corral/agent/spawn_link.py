"""The agent's end of its link to the spawn helper (``spawner``): start the helper, send it
requests, hand its answers to the launcher.

The link never blocks the agent's loop: requests made during a loop turn leave together
at its end (one ``send``), what the socket cannot take yet waits for it to drain, and
answers are read as they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Protocol

import msgpack  # type: ignore[import-untyped]  # msgpack ships no type information

from corral.agent.spawner import CONFIG, EXITED, FAILED, SIGNAL, SPAWN, STARTED

log = logging.getLogger("corral.agent")


class SpawnAnswers(Protocol):
    """What the launcher does with the helper's answers."""

    def started(self, token: int, pid: int, started_at: float) -> None: ...

    def failed(self, token: int, reason: str) -> None: ...

    def exited(self, pid: int, exit_code: int | None, signum: int | None) -> None: ...

    def link_lost(self, reason: str) -> None: ...


class SpawnLink:
    """One spawn helper, started at once, and the stream to it."""

    def __init__(
        self,
        state_dir: Path,
        base_env: dict[str, str],
        run_as: list[object] | None,
        answers: SpawnAnswers,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._answers = answers
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with theirs:
            # A process group of its own: a ^C or a signal to the agent's group is the
            # agent's to handle; the helper leaves when the agent's end closes.
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "corral.agent.spawner",
                    str(theirs.fileno()),
                    str(state_dir.absolute()),
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                process_group=0,
            )
        ours.setblocking(False)
        self._sock = ours
        self._unpacker = msgpack.Unpacker(raw=False, use_list=True, strict_map_key=False)
        self._out = bytearray()
        self._flush_scheduled = False
        self._writing = False
        self._closed = False
        self._loop.add_reader(ours.fileno(), self._on_readable)
        self._send([CONFIG, base_env, run_as])

    @property
    def pid(self) -> int:
        return self._process.pid

    def spawn(
        self,
        token: int,
        upid: str,
        round_: int,
        program: str,
        argv: list[str],
        env: dict[str, str],
        cwd: str | None,
    ) -> None:
        self._send([SPAWN, token, upid, round_, program, argv, env, cwd])

    def signal(self, pid: int, signum: int) -> None:
        self._send([SIGNAL, pid, signum])

    def close(self) -> None:
        """Close the link: the helper sends what it owes, then leaves, killing nothing."""
        if self._closed:
            return
        self._flush()
        self._shut()

    # --- internals ----------------------------------------------------------------------------

    def _send(self, message: list[Any]) -> None:
        if self._closed:
            return
        self._out += msgpack.packb(message)
        if not self._flush_scheduled and not self._writing:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._closed or not self._out:
            return
        try:
            sent = self._sock.send(self._out)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._lost(f"cannot write to it: {exc}")
            return
        del self._out[:sent]
        if self._out and not self._writing:
            self._writing = True
            self._loop.add_writer(self._sock.fileno(), self._on_writable)

    def _on_writable(self) -> None:
        self._writing = False
        self._loop.remove_writer(self._sock.fileno())
        self._flush()

    def _on_readable(self) -> None:
        try:
            data = self._sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lost(f"cannot read from it: {exc}")
            return
        if not data:
            self._lost(self._how_it_ended())
            return
        self._unpacker.feed(data)
        answers = self._answers
        for message in self._unpacker:
            kind = message[0]
            if kind == STARTED:
                answers.started(message[1], message[2], message[3])
            elif kind == EXITED:
                answers.exited(message[1], message[2], message[3])
            elif kind == FAILED:
                answers.failed(message[1], message[2])

    def _how_it_ended(self) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = self._process.wait(timeout=1.0)
            return f"it ended with status {code}" if code >= 0 else f"it died of signal {-code}"
        return "it closed the link"

    def _lost(self, reason: str) -> None:
        self._shut()
        self._answers.link_lost(reason)

    def _shut(self) -> None:
        self._closed = True
        self._loop.remove_reader(self._sock.fileno())
        if self._writing:
            self._loop.remove_writer(self._sock.fileno())
        self._sock.close()
        # reaped now if it is already gone, else by the next look (it leaves on its own)
        self._process.poll()
