"""``corral pipeline`` (run, events, add-event, scale) and ``corral queue serve``.

``run`` takes the DRP framework's options; the others talk to the pipeline's shared queue
(found through the same configuration file) or, for ``scale``, to the dispatcher.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from corral.cli._context import CliFailure, Settings, pass_settings
from corral.cli.output import Format, emit, format_options, rows_table
from corral.errors import CorralError

_ENDED = ("700-TERMINATED", "800-EXITED", "850-FAILED", "900-REJECTED")

config_option = click.option(
    "-c", "--config", "config_path", type=click.Path(dir_okay=False), help="A config.cfg file."
)


def _framework(spec: str, config_path: str | None) -> Any:
    # imported when used: the framework needs the queue and the store, which most commands don't
    from corral.pipeline import Framework

    try:
        return Framework(spec, config_path)
    except ValueError as exc:
        raise CliFailure(str(exc)) from None


@click.group()
def pipeline() -> None:
    """Event-driven pipelines over a shared, durable event queue."""


@pipeline.command("run")
@click.argument("spec", metavar="PIPELINE")
@config_option
@click.option(
    "-w",
    "--wait_for_event",
    "--wait-for-event",
    "wait",
    is_flag=True,
    help="Wait for a first event, then stop when none is left.",
)
@click.option("-W", "--continue", "continuous", is_flag=True, help="Never stop for lack of events.")
@click.option(
    "-s",
    "--start_queue_manager_only",
    "--queue-only",
    "qm_only",
    is_flag=True,
    help="Only host the shared queue.",
)
@click.option(
    "-i",
    "--ingest_data_only",
    "--ingest-only",
    "ingest_only",
    is_flag=True,
    help="Append the ingestion events, then stop.",
)
@click.option("-d", "--directory", type=click.Path(file_okay=False), help="Ingest this directory.")
@click.option("-m", "--monitor", is_flag=True, help="Keep ingesting new files of the directory.")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
def run(
    spec: str,
    config_path: str | None,
    wait: bool,
    continuous: bool,
    qm_only: bool,
    ingest_only: bool,
    directory: str | None,
    monitor: bool,
    files: tuple[str, ...],
) -> None:
    """Run PIPELINE (module:Class, or a module holding one pipeline)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # stopped by the dispatcher (scaled down): leave as on ^C, giving back what it holds
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    framework = _framework(spec, config_path)
    try:
        if (directory or files) and not qm_only:
            framework.ingest_data(directory, files, monitor)
        framework.start(qm_only, ingest_only, wait, continuous)
    except KeyboardInterrupt:
        pass
    finally:
        framework.close()


@pipeline.command("events")
@click.argument("spec", metavar="PIPELINE")
@config_option
@format_options
def events(spec: str, config_path: str | None, fmt: Format) -> None:
    """List the shared queue's pending and in-progress events."""
    framework = _framework(spec, config_path)
    try:
        pending, held = framework._connect().listing(framework.queue_name)
    finally:
        framework.close()
    rows = [_row(e, "pending") for e in pending] + [_row(e, "in progress") for e in held]
    columns = ("id", "status", "name", "args", "attempts", "holder")
    emit(rows, fmt, lambda found: rows_table(found, columns))


def _row(event: Any, status: str) -> dict[str, Any]:
    return {
        "id": event.id,
        "status": status,
        "name": event.name,
        "args": event.args,
        "attempts": event.attempts,
        "holder": event.holder or "",
    }


@pipeline.command("add-event")
@click.argument("spec", metavar="PIPELINE")
@click.argument("name")
@click.argument("args", default="{}")
@config_option
@click.option("--recurrent", is_flag=True, help="Append it again each time it is handled.")
def add_event(spec: str, name: str, args: str, config_path: str | None, recurrent: bool) -> None:
    """Append event NAME with ARGS (a JSON object) to the shared queue."""
    try:
        values = json.loads(args)
    except ValueError as exc:
        raise CliFailure(f"ARGS must be a JSON object: {exc}") from None
    if not isinstance(values, dict):
        raise CliFailure('ARGS must be a JSON object, like \'{"name": "a.fits"}\'')
    framework = _framework(spec, config_path)
    try:
        if not framework.config.want_multiprocessing:
            raise CliFailure("add-event needs the shared queue: want_multiprocessing = True")
        framework.append_event(name, values, recurrent)
    finally:
        framework.close()
    click.echo(f"appended {name} to {framework.queue_name}")


@pipeline.command("scale")
@click.argument("spec", metavar="PIPELINE")
@click.option("--workers", type=click.IntRange(min=0), default=None, help="Run N workers.")
@click.option("--auto", is_flag=True, help="Follow the queue's depth until interrupted.")
@click.option("--min", "minimum", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--max", "maximum", type=click.IntRange(min=1), default=4, show_default=True)
@click.option(
    "--per-worker",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Events pending or in progress per worker.",
)
@click.option(
    "--cooldown",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds fewer workers must be enough before some are stopped.",
)
@click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True)
@config_option
@click.option("--engine", default=None, help="The execution engine of the workers.")
@pass_settings
def scale(
    settings: Settings,
    spec: str,
    workers: int | None,
    auto: bool,
    minimum: int,
    maximum: int,
    per_worker: int,
    cooldown: float,
    interval: float,
    config_path: str | None,
    engine: str | None,
) -> None:
    """Run continuous workers of PIPELINE as dispatched processes: --workers N, or --auto."""
    if (workers is None) == (not auto):
        raise click.UsageError("give either --workers N or --auto")
    framework = _framework(spec, config_path)
    workers_of = _Workers(settings, spec, framework.queue_name, config_path, engine)
    if workers is not None:
        framework.close()
        workers_of.scale(workers)
        click.echo(f"{framework.queue_name}: {workers} workers")
        return
    from corral.pipeline.scaling import AutoScaler

    try:
        scaler = AutoScaler(minimum, maximum, per_worker, cooldown)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        while True:
            pending, held = framework._connect().listing(framework.queue_name)
            current = workers_of.count()
            wanted = scaler.wanted(len(pending) + len(held), current, time.monotonic())
            if wanted != current:
                workers_of.scale(wanted)
                click.echo(
                    f"{framework.queue_name}: {len(pending) + len(held)} events, "
                    f"{current} → {wanted} workers"
                )
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        framework.close()


class _Workers:
    """The dispatched worker processes of one pipeline: ``pipeline-<queue>-w<N>``."""

    def __init__(
        self,
        settings: Settings,
        spec: str,
        queue: str,
        config_path: str | None,
        engine: str | None,
    ) -> None:
        self.settings = settings
        self.prefix = f"pipeline-{queue}-w"
        self.definition = f"pipeline-{queue}"
        self.engine = engine
        self.argv = ["-m", "corral", "pipeline", "run", spec, "-W"]
        if config_path is not None:
            self.argv += ["-c", str(Path(config_path).resolve())]

    def _live(self, client: Any) -> list[dict[str, Any]]:
        return sorted(
            (
                p
                for p in client.describe_processes()
                if p["upid"].startswith(self.prefix) and p["state"] not in _ENDED
            ),
            key=lambda p: int(p["upid"][len(self.prefix) :]),
        )

    def count(self) -> int:
        with self.settings.client() as client:
            return len(self._live(client))

    def scale(self, workers: int) -> None:
        """Stop the newest beyond ``workers``, or start what is missing."""
        executable = {"exec": sys.executable, "argv": self.argv}
        with self.settings.client() as client:
            try:
                client.create_definition(self.definition, "exec", executable)
            except CorralError:
                client.update_definition(self.definition, "exec", executable)
            live = self._live(client)
            for extra in live[workers:]:
                client.terminate_process(extra["upid"])
            taken = {p["upid"] for p in live}
            index = 0
            while len(taken) < workers:
                upid = f"{self.prefix}{index}"
                index += 1
                if upid not in taken:
                    client.schedule_process(
                        upid,
                        self.definition,
                        restart_mode="ABNORMAL",
                        execution_engine_id=self.engine,
                    )
                    taken.add(upid)


@click.group("queue")
def queue_group() -> None:
    """The shared event queue's server."""


@queue_group.command("serve")
@config_option
def serve(config_path: str | None) -> None:
    """Host the shared queue on the configured host and port, until interrupted."""
    from corral.pipeline.config import FrameworkConfig
    from corral.pipeline.queue_host import QueueHost

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    host = QueueHost(FrameworkConfig.read(config_path))
    try:
        host.start()
    except OSError as exc:
        raise CliFailure(f"cannot listen: {exc}") from None
    click.echo(f"serving the event queue on {host.address[0]}:{host.address[1]}")
    try:
        host.wait()
    except KeyboardInterrupt:
        pass
    finally:
        host.stop()
