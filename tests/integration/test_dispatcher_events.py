"""State changes told to subscribers (JSON POSTs to their URLs) and streamed from /events.

The subscriber is a stdlib HTTP server in a thread on a free loopback port, recording
every POST it gets; it can be told to fail its first answers, to see them retried.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(30)

#: a process that runs until its gate exists and exits 0 goes through exactly these
ONE_CLEAN_RUN = ["200-REQUESTED", "350-ASSIGNED", "400-PENDING", "500-RUNNING", "800-EXITED"]


class Subscriber:
    """Records JSON POSTs; answers 500 to the first ``fail_first`` of them."""

    def __init__(self, fail_first: int = 0) -> None:
        self.posts: list[dict[str, Any]] = []
        self.content_types: list[str] = []
        self.failed = 0
        self.fail_first = fail_first
        subscriber = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if subscriber.failed < subscriber.fail_first:
                    subscriber.failed += 1
                    self.send_response(500)
                else:
                    subscriber.content_types.append(self.headers.get("Content-Type", ""))
                    subscriber.posts.append(json.loads(body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def states(self, upid: str) -> list[str]:
        return [p["state"] for p in self.posts if p["upid"] == upid]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def corral(start_corral) -> Iterator:
    with start_corral() as corral:
        yield corral


@pytest.fixture
def subscriber() -> Iterator[Subscriber]:
    subscriber = Subscriber()
    yield subscriber
    subscriber.close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/nobody-listens"


def test_a_subscriber_gets_each_state_change_of_its_process_as_a_json_post_in_order(
    corral, subscriber: Subscriber, gate: Path
) -> None:
    upid = corral.run(corral.WAIT_FOR_GATE, env={"GATE": gate}, subscribers=[subscriber.url])
    corral.wait_state(upid, "500-RUNNING")
    gate.touch()
    assert corral.wait_end(upid)["state"] == "800-EXITED"
    corral.wait_until(lambda: "800-EXITED" in subscriber.states(upid), "the EXITED post")
    assert subscriber.states(upid) == ONE_CLEAN_RUN
    posts = subscriber.posts
    assert all(t.startswith("application/json") for t in subscriber.content_types)
    assert [p["previous_state"] for p in posts] == [None, *ONE_CLEAN_RUN[:-1]]
    assert {p["round"] for p in posts} == {1}
    assert posts[-1]["process"]["exit_code"] == 0
    assert posts[-1]["process"]["upid"] == upid
    times = [p["time"] for p in posts]
    assert times == sorted(times)


def test_a_process_that_exits_at_once_still_shows_running_to_subscribers_and_the_stream(
    corral, subscriber: Subscriber
) -> None:
    # The agent may report "running" and "exited" in one batch: each is still a change.
    definition = corral.define("exit 0")
    upids = [corral.unique("quick") for _ in range(8)]
    hooks = [subscriber.url]
    batch = [{"upid": u, "definition_id": definition, "subscribers": hooks} for u in upids]
    recorder = corral.events()
    try:
        corral.client.schedule_processes(batch)
        for upid in upids:
            assert corral.wait_end(upid)["starts"] == 1
        corral.wait_until(
            lambda: all("800-EXITED" in subscriber.states(u) for u in upids), "every EXITED post"
        )
        corral.wait_until(
            lambda: all("800-EXITED" in recorder.states(u) for u in upids), "every EXITED event"
        )
    finally:
        recorder.close()
    posted = {u: subscriber.states(u) for u in upids}
    streamed = {u: recorder.states(u) for u in upids}
    assert posted == dict.fromkeys(upids, ONE_CLEAN_RUN)
    assert streamed == dict.fromkeys(upids, ONE_CLEAN_RUN)


def test_a_failing_subscriber_is_retried_until_it_takes_the_event(corral, gate: Path) -> None:
    subscriber = Subscriber(fail_first=2)
    try:
        upid = corral.run(corral.WAIT_FOR_GATE, env={"GATE": gate}, subscribers=[subscriber.url])
        corral.wait_state(upid, "500-RUNNING")
        gate.touch()
        corral.wait_end(upid)
        corral.wait_until(lambda: "800-EXITED" in subscriber.states(upid), "the EXITED post")
        assert subscriber.failed == 2
        assert subscriber.states(upid) == ONE_CLEAN_RUN
    finally:
        subscriber.close()


def test_a_subscriber_that_is_down_neither_blocks_nor_slows_the_dispatcher(
    corral, subscriber: Subscriber, gate: Path
) -> None:
    # every event to the dead URL is retried for about 8.6 s before it is given up
    dead = closed_port_url()
    started = time.monotonic()
    upid = corral.run(corral.WAIT_FOR_GATE, env={"GATE": gate}, subscribers=[dead, subscriber.url])
    corral.wait_state(upid, "500-RUNNING", timeout=3)
    others = [corral.run("exit 0") for _ in range(3)]
    for other in others:
        assert corral.wait_end(other, timeout=3)["state"] == "800-EXITED"
    gate.touch()
    assert corral.wait_end(upid, timeout=3)["state"] == "800-EXITED"
    assert time.monotonic() - started < 3
    # the live subscriber of the same process is not held back by the dead one
    corral.wait_until(
        lambda: subscriber.states(upid) == ONE_CLEAN_RUN, "the live subscriber's posts", 3
    )


def test_the_events_stream_of_a_process_yields_the_same_changes_its_subscriber_gets(
    corral, subscriber: Subscriber, gate: Path
) -> None:
    definition = corral.define(corral.WAIT_FOR_GATE, env={"GATE": str(gate)})
    upid = corral.unique("watched")
    recorder = corral.events(upid)
    try:
        corral.client.create_process(upid, definition)
        corral.client.schedule_process(upid, subscribers=[subscriber.url])
        corral.wait_state(upid, "500-RUNNING")
        gate.touch()
        corral.wait_end(upid)
        corral.wait_until(lambda: "800-EXITED" in recorder.states(upid), "the EXITED event")
        corral.wait_until(lambda: "800-EXITED" in subscriber.states(upid), "the EXITED post")
    finally:
        recorder.close()
    assert recorder.states(upid) == ["100-UNSCHEDULED", *ONE_CLEAN_RUN]
    streamed = recorder.of(upid)[1:]
    posted = [p for p in subscriber.posts if p["upid"] == upid]
    assert [(e["round"], e["state"], e["previous_state"]) for e in streamed] == [
        (p["round"], p["state"], p["previous_state"]) for p in posted
    ]


def test_the_events_stream_of_one_process_carries_no_other_process(corral) -> None:
    upid = corral.unique("watched")
    recorder = corral.events(upid)
    try:
        other = corral.run("exit 0")
        corral.client.schedule_process(upid, corral.define("exit 0"))
        corral.wait_end(other)
        corral.wait_end(upid)
        corral.wait_until(lambda: "800-EXITED" in recorder.states(upid), "the EXITED event")
    finally:
        recorder.close()
    assert {e["upid"] for e in recorder.events} == {upid}


def test_the_events_stream_of_all_processes_shows_each_of_them(corral) -> None:
    recorder = corral.events()
    try:
        upids = [corral.run("exit 0") for _ in range(3)]
        for upid in upids:
            corral.wait_end(upid)
        corral.wait_until(
            lambda: all("800-EXITED" in recorder.states(u) for u in upids), "every EXITED event"
        )
    finally:
        recorder.close()
    for upid in upids:
        assert recorder.states(upid)[0] == "200-REQUESTED"
