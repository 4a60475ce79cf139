"""The ``corral`` command: ceictl-style verbs over the HTTP client.

Owns the shell UX: command groups (``definition``, ``process``, ``node``, ``engine``),
``agent`` (handed to ``corral.agent.main``) and ``serve`` (``corral.cli.serve``), both
imported only when run; output rendering lives in ``output``. Imports ``corral.client``
and ``corral.errors``; only ``serve.py`` may import the dispatcher. Errors print as one
line ``error: <message>`` and exit 1 (2 for usage errors); never a traceback unless
``CORRAL_DEBUG`` is set.
"""

from __future__ import annotations

import errno
import importlib
import os
from collections.abc import Sequence
from typing import Any

import click

from corral import __version__
from corral.cli._context import CliFailure, Settings, failure
from corral.cli.audit import audit
from corral.cli.definition import definition
from corral.cli.node import engine, node
from corral.cli.pipeline import pipeline, queue_group
from corral.cli.process import process
from corral.errors import CorralError

__all__ = ["cli", "main"]

_PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True}


class CorralGroup(click.Group):
    """The root group: turns errors into one line, and finds ``serve`` when asked for it."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CorralError as exc:
            raise failure(exc) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise  # `corral process list | head`: click quiets a closed pipe itself
            raise _unexpected(exc) from None
        except Exception as exc:
            raise _unexpected(exc) from None

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "serve" and "serve" not in self.commands:
            self.add_command(_load_serve())
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "serve"})


def _unexpected(exc: Exception) -> Exception:
    if os.environ.get("CORRAL_DEBUG"):
        return exc
    return CliFailure(
        f"unexpected {type(exc).__name__}: {exc} (set CORRAL_DEBUG=1 to see the traceback)"
    )


def _load_serve() -> click.Command:
    # imported on demand: it pulls in the whole dispatcher, which other commands never need
    try:
        command = importlib.import_module("corral.cli.serve").serve
    except (ImportError, AttributeError) as exc:
        reason = str(exc)

        @click.command("serve", context_settings=_PASS_THROUGH, add_help_option=False)
        @click.argument("args", nargs=-1, type=click.UNPROCESSED)
        def unavailable(args: tuple[str, ...]) -> None:
            """Run the dispatcher (not available in this installation)."""
            raise CliFailure(f"corral serve is not available: {reason}")

        return unavailable
    if not isinstance(command, click.Command):
        raise CliFailure("corral.cli.serve.serve is not a click command")
    return command


@click.group(cls=CorralGroup)
@click.option("--url", metavar="URL", help="Dispatcher URL (default: $CORRAL_URL, ~/.corral/url).")
@click.option(
    "--token", metavar="TOKEN", help="API token (default: $CORRAL_TOKEN, ~/.corral/token)."
)
@click.option(
    "--ca",
    metavar="FILE",
    help="PEM certificates an https dispatcher is trusted by (default: $CORRAL_CA, else the"
    " system's and ~/.corral/tls_certificate.pem).",
)
@click.version_option(__version__, prog_name="corral")
@click.pass_context
def cli(ctx: click.Context, url: str | None, token: str | None, ca: str | None) -> None:
    """corral: run processes on an elastic pool of nodes."""
    settings = ctx.ensure_object(Settings)
    settings.url = url or settings.url
    settings.token = token or settings.token
    settings.ca = ca or settings.ca


@cli.command(context_settings=_PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def agent(ctx: click.Context, args: tuple[str, ...]) -> None:
    """Run a node agent; arguments go to it untouched (try `corral agent --help`)."""
    try:
        agent_main = importlib.import_module("corral.agent.main").main
    except (ImportError, AttributeError) as exc:
        raise CliFailure(f"corral agent is not available: {exc}") from None
    code = agent_main(list(args))
    ctx.exit(code if isinstance(code, int) else 0)


cli.add_command(definition)
cli.add_command(process)
cli.add_command(node)
cli.add_command(engine)
cli.add_command(pipeline)
cli.add_command(queue_group)
cli.add_command(audit)


def main(argv: Sequence[str] | None = None) -> None:
    """The ``corral`` console script."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="corral")
