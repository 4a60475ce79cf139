"""The framework: events in, actions run, follow-up events out.

One processing loop per process, one action at a time, as in the DRP framework. The loop takes
events from the process's own high-priority queue first (follow-up events of the actions it
ran), then from the event queue: an in-process queue in single-process mode, the shared queue
of a queue server in multi-process mode (the first framework process starts one if none
answers). A shared event is acknowledged once it and every follow-up it caused were handled,
so a process killed mid-chain has its event handled again by another after the visibility
timeout.
"""

from __future__ import annotations

import json
import logging
import queue
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from corral.errors import Unavailable
from corral.pipeline.config import FrameworkConfig
from corral.pipeline.data_set import DataSet
from corral.pipeline.pipeline import BasePipeline, load_pipeline
from corral.pipeline.primitives import Action, Arguments, ProcessingContext
from corral.pipeline.queue_host import QueueHost, queue_client_tls, queue_secret
from corral.queue import BlockingQueueClient
from corral.queue.messages import QueuedEvent

#: an event name the loop stops on (a pipeline's ``no_event_event`` may be it)
EXIT_EVENT = "exit"

_Local = tuple[str, Any, bool]


class QueueGone(Unavailable):
    """The shared queue went away while this process held none of its events."""


class Framework:
    """Runs a pipeline: ``append_event``, ``ingest_data``, then ``start``."""

    def __init__(
        self,
        pipeline: type[BasePipeline] | str,
        config: FrameworkConfig | str | Path | None = None,
    ) -> None:
        self.config = (
            config if isinstance(config, FrameworkConfig) else FrameworkConfig.read(config)
        )
        pipeline_class = load_pipeline(pipeline) if isinstance(pipeline, str) else pipeline
        self.logger = logging.getLogger(f"corral.pipeline.{pipeline_class.__name__}")
        self.context = ProcessingContext(self.config, self.logger, push_event=self.push_event)
        self.pipeline = pipeline_class(self.context)
        self.queue_name = self.config.queue_name or pipeline_class.queue_name()
        self._high: deque[_Local] = deque()
        self._local: queue.Queue[_Local] = queue.Queue()
        self._shared: BlockingQueueClient | None = None
        self._host: QueueHost | None = None
        self.data_set: DataSet | None = None
        self.handled = 0

    # --- filling the queues --------------------------------------------------------------------

    def append_event(self, name: str, args: Any = None, recurrent: bool = False) -> None:
        """Append to the event queue (the shared one in multi-process mode, once durable)."""
        shared = self._connect() if self.config.want_multiprocessing else None
        if shared is None:
            self._local.put((name, args, recurrent))
        else:
            shared.put(self.queue_name, [(name, _plain(name, args), recurrent)])

    def push_event(self, name: str, args: Any = None) -> None:
        """Append to this process's high-priority queue, taken before the event queue."""
        self._high.append((name, args, False))

    def ingest_data(
        self,
        path: str | Path | None = None,
        files: Iterable[str | Path] = (),
        monitor: bool = False,
    ) -> None:
        """Append the ingestion event for each file (of ``path`` matching ``file_type``, or
        ``files``), and with ``monitor`` for each new file of ``path`` from then on."""
        event = self.config.default_ingestion_event

        def new_file(found: Path) -> None:
            self.append_event(event, Arguments(name=str(found)))

        self.data_set = DataSet(path, self.config.file_type, new_file)
        self.context.data_set = self.data_set
        self.data_set.ingest(files)
        if monitor and path is not None:
            self.data_set.monitor(self.config.monitor_interval)

    # --- running -------------------------------------------------------------------------------

    def start(
        self,
        qm_only: bool = False,
        ingest_data_only: bool = False,
        wait_for_event: bool = False,
        continuous: bool = False,
    ) -> None:
        """Run: host the queue only, ingest only, or handle events until the seed's rules say
        stop (no event left; with ``wait_for_event`` after a first one; never if continuous)."""
        if qm_only:
            self._serve_queue_forever()
            return
        if self.config.want_multiprocessing:
            self._connect()
        if ingest_data_only:
            return
        try:
            self._loop(wait_for_event, continuous)
        except QueueGone:
            return
        finally:
            if self.data_set is not None:
                self.data_set.stop()

    def close(self) -> None:
        """Give back the shared events still held (interrupted mid-event), then disconnect."""
        if self._shared is not None:
            held = self._shared.held()
            if held:
                try:
                    self._shared.release(held)
                except Unavailable as exc:
                    self.logger.warning("could not give events back: %s", exc.message)
            self._shared.close()
            self._shared = None
        if self._host is not None:
            self._host.stop()
            self._host = None

    def _loop(self, wait_for_event: bool, continuous: bool) -> None:
        seen_one = False
        while True:
            if self._high:
                if self._run(*self._high.popleft()) == EXIT_EVENT:
                    return
                continue
            taken = self._next_event()
            if taken is not None:
                seen_one = True
                name, args, recurrent, shared = taken
                if self._run(name, args, recurrent, shared) == EXIT_EVENT:
                    return
                continue
            if self.config.no_event_event is not None:
                time.sleep(self.config.no_event_wait_time)
                self.push_event(self.config.no_event_event, Arguments())
                continue
            if continuous or (wait_for_event and not seen_one) or self._hosting_work():
                continue
            return

    def _hosting_work(self) -> bool:
        """Whether this process hosts the queue while others still handle its events: the
        host stays until they are done, or their acknowledgements would find no queue."""
        if self._host is None or self._shared is None:
            return False
        pending, held = self._shared.listing(self.queue_name)
        return bool(pending or held)

    def _next_event(self) -> tuple[str, Any, bool, QueuedEvent | None] | None:
        timeout = self.config.event_timeout
        if self._shared is None:
            try:
                name, args, recurrent = self._local.get(timeout=timeout)
            except queue.Empty:
                return None
            return name, args, recurrent, None
        try:
            events = self._shared.take(self.queue_name, limit=1, wait=timeout)
        except Unavailable as exc:
            # holding nothing, a worker whose queue went away stops, as in the DRP framework
            self.logger.warning("%s; stopping", exc.message)
            raise QueueGone(exc.message) from None
        if not events:
            return None
        (event,) = events
        return event.name, Arguments(**json.loads(event.args)), event.recurrent, event

    def _run(
        self, name: str, args: Any, recurrent: bool, shared: QueuedEvent | None = None
    ) -> str | None:
        """Handle one event and the follow-ups it pushes; acknowledge a shared one after."""
        if name == EXIT_EVENT:
            if shared is not None:
                self._ack(shared)  # consumed: it stops one process, not every one after it
            return EXIT_EVENT
        self._handle(name, args, recurrent)
        if shared is None:
            if recurrent:
                self._local.put((name, args, recurrent))
            return None
        while self._high:
            follow = self._high.popleft()
            if follow[0] == EXIT_EVENT:
                self._ack(shared)
                return EXIT_EVENT
            self._handle(*follow)
        self._ack(shared)
        return None

    def _ack(self, event: QueuedEvent) -> None:
        assert self._shared is not None  # a shared event came from it
        refused = self._shared.ack([event.id])
        if refused:
            self.logger.warning(
                "event %d (%s) was given to another worker while this one handled it",
                event.id,
                event.name,
            )

    def _handle(self, name: str, args: Any, recurrent: bool) -> None:
        try:
            action_name, new_state, next_event = self.pipeline.entry(name)
        except LookupError as exc:
            self.logger.error("%s", exc)
            return
        action = Action(name, _arguments(args), action_name or "", new_state, next_event, recurrent)
        try:
            output = (
                self.pipeline.handler(action_name)(action, self.context) if action_name else args
            )
        except Exception as exc:  # a failed action is the pipeline's to handle, not the loop's
            self.pipeline.on_error(action, self.context, exc)
            return
        finally:
            self.handled += 1
        if new_state is not None:
            self.context.state = new_state
        if output is not None and next_event is not None:
            self.push_event(next_event, output)

    # --- the shared queue ----------------------------------------------------------------------

    def _connect(self) -> BlockingQueueClient:
        if self._shared is not None:
            return self._shared
        config = self.config
        host, port = config.queue_manager_hostname, config.queue_manager_portnr
        tls = queue_client_tls(config)
        for attempt in range(3):
            secret = config.queue_manager_auth_code or queue_secret(config, create=False)
            if secret is not None:
                client = BlockingQueueClient(host, port, secret, tls=tls)
                try:
                    client.connect(timeout=2.0)
                except Unavailable:
                    client.close()
                else:
                    self._shared = client
                    return client
            if attempt == 0:
                self._start_host()
        raise Unavailable(f"no queue server answers at {host}:{port}, and none could be started")

    def _start_host(self) -> None:
        """Be the queue server, as the first DRP process is (another may win the race)."""
        host = QueueHost(self.config)
        try:
            host.start()
        except OSError as exc:
            self.logger.info("another process hosts the queue: %s", exc)
            return
        self._host = host

    def _serve_queue_forever(self) -> None:
        self._start_host()
        if self._host is None:
            raise Unavailable("the queue could not be hosted here: another process holds its port")
        try:
            self._host.wait()
        finally:
            self.close()


def _arguments(args: Any) -> Any:
    if isinstance(args, dict):
        return Arguments(**args)
    return Arguments() if args is None else args


def _plain(name: str, args: Any) -> dict[str, Any]:
    """An event's arguments as a JSON object, for the shared queue."""
    if args is None:
        return {}
    plain = args.to_dict() if isinstance(args, Arguments) else args
    if not isinstance(plain, dict):
        raise TypeError(f"event {name}: arguments must be Arguments or a dict, not {type(args)}")
    try:
        json.dumps(plain)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"event {name}: arguments must be plain JSON values: {exc}") from None
    return plain
