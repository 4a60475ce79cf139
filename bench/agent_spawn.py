"""How many processes a second the agent spawns and reaps, against plain ``subprocess``.

A test hub (an asyncio server speaking ``corral.wire``) sends N ``Launch`` messages of
``/bin/true`` in batches to a real ``python -m corral.agent`` and times from the first Launch
to the N-th ``exited`` report. The baseline spawns the same N with ``subprocess.Popen`` two
at a time (start two, wait for both) in this process. Both rates and their ratio are printed.

    .venv/bin/python bench/agent_spawn.py [--count 2000] [--batch 200] [--slots 2×cores]
        [--log-level INFO]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import corral.wire
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from corral.wire.codec import Connection
from corral.wire.handshake import answer_hello
from corral.wire.messages import (
    AGENT_REALM,
    PROTOCOL_VERSION,
    Hello,
    Launch,
    ProcessReport,
    Welcome,
)

TOKEN = "bench-token"


async def agent_rate(count: int, batch: int, slots: int, log_level: str, state_dir: Path) -> float:
    sessions: asyncio.Queue[Connection] = asyncio.Queue()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(reader, writer)
        await answer_hello(conn, TOKEN, AGENT_REALM, PROTOCOL_VERSION)
        hello = (await conn.read_batch())[0]
        assert isinstance(hello, Hello)
        conn.send(Welcome(5.0))
        sessions.put_nowait(conn)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    env = {**os.environ, "CORRAL_AGENT_TOKEN": TOKEN}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(corral.wire.__file__).parents[2]), *filter(None, [env.get("PYTHONPATH")])]
    )
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "corral.agent",
        "--dispatcher", f"127.0.0.1:{port}",
        "--state-dir", str(state_dir),
        "--log-level", log_level,
        "--slots", str(slots),
        "--allow-root",  # as whoever runs it: the fast path is what is measured
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(state_dir.parent / "agent.log").open("wb"),
    )  # fmt: skip
    try:
        conn = await asyncio.wait_for(sessions.get(), 10)
        started = time.perf_counter()
        for first in range(0, count, batch):
            conn.send_many(
                Launch(f"p{i}", 1, "/bin/true", [], {}, None, "{}")
                for i in range(first, min(first + batch, count))
            )
            await conn.drain()  # one frame per batch
        exited = 0
        while exited < count:
            for msg in await conn.read_batch():
                if isinstance(msg, ProcessReport) and msg.status != "running":
                    assert msg.exit_code == 0, msg
                    exited += 1
        elapsed = time.perf_counter() - started
        await conn.aclose()
        return count / elapsed
    finally:
        agent.kill()
        await agent.wait()
        server.close()


def subprocess_rate(count: int) -> float:
    started = time.perf_counter()
    for _ in range(count // 2):
        pair = [subprocess.Popen(["/bin/true"]) for _ in range(2)]
        for proc in pair:
            proc.wait()
    return (count // 2 * 2) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--slots", type=int, default=2 * (os.cpu_count() or 1))
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--tmp", default=None, help="where the agent's state dir goes")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, interleaved")
    args = parser.parse_args()
    agent: list[float] = []
    baseline: list[float] = []
    # Interleaved runs and medians: on a shared machine one run alone says little.
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            state = Path(tmp) / "state"
            agent.append(
                asyncio.run(agent_rate(args.count, args.batch, args.slots, args.log_level, state))
            )
        baseline.append(subprocess_rate(args.count))
    where = args.tmp or tempfile.gettempdir()
    print(f"{args.count} x /bin/true; median of {args.repeat} (min..max); state dir in {where}")
    print(
        f"agent, {args.slots} slots, batches of {args.batch}, log {args.log_level}: {_rates(agent)}"
    )
    print(f"subprocess.Popen, two at a time:     {_rates(baseline)}")
    print(f"ratio agent / subprocess: {statistics.median(agent) / statistics.median(baseline):.2f}")


def _rates(rates: list[float]) -> str:
    return f"{statistics.median(rates):6.0f}/s ({min(rates):.0f}..{max(rates):.0f})"


if __name__ == "__main__":
    main()
