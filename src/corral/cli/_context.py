"""What every command shares: the settings from the global options, and error reporting.

:class:`Settings` lives in click's context object. Its ``client_factory`` is the seam tests
use to point the CLI at an in-process app; everything else builds a real :class:`Client`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import click

from corral.client import Client
from corral.errors import CorralError

ClientFactory = Callable[[str | None, str | None, str | None], Client]


def _default_factory(url: str | None, token: str | None, ca: str | None) -> Client:
    return Client(url=url, token=token, ca=ca)


@dataclass(slots=True)
class Settings:
    """The global options, and how to turn them into a client."""

    url: str | None = None
    token: str | None = None
    ca: str | None = None
    client_factory: ClientFactory = field(default=_default_factory)

    def client(self) -> Client:
        return self.client_factory(self.url, self.token, self.ca)


pass_settings = click.make_pass_decorator(Settings, ensure=True)


class CliFailure(click.ClickException):
    """A failure shown as one line ``error: <message>``; exits 1."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", file=file or sys.stderr)


class TimedOut(CliFailure):
    """A wait ran out of time; exits 124, as timeout(1) does."""

    exit_code = 124


def failure(exc: CorralError) -> CliFailure:
    """The CLI line for a corral error: its message, and the field when not already named."""
    message = exc.message
    if exc.field and exc.field not in message:
        message += f" (field: {exc.field})"
    return CliFailure(message)
