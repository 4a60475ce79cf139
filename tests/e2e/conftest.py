"""End to end: a real ``corral serve`` subprocess, driven as a user drives it.

``served`` (one per test module) runs ``corral serve --home H --listen 127.0.0.1:0`` with one
local node; ``cli`` runs ``python -m corral ...`` against it with only ``CORRAL_HOME`` set, so
the CLI finds the URL and the token by itself, as it does for a user. Teardown stops the
dispatcher and destroys every local agent and what it runs.

``browser`` is Debian's headless Chromium driven by Playwright (never a browser Playwright
downloads); ``dashboard`` opens logged-in pages in it. Without ``/usr/bin/chromium`` the
browser tests are skipped, except in CI (``CI=true``), where ``.ci/run`` installs it and
its absence is a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from corral.testing.serve import ServeProcess, pid_alive, wait_until

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

T = TypeVar("T")

CONFIG = """
[[engines]]
id = "default"
allow_root = true  # the tests may run as root
driver = "local"
slots = 4
base_need = 1
maximum_vms = 1
heartbeat_period = 0.2
heartbeat_warning = 1.0
heartbeat_missing = 2.0
terminate_grace = 1.0
"""
DEADLINE = 20.0


def user_env(home: Path) -> dict[str, str]:
    """The environment of a user whose corral lives in ``home`` (nothing else set)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env["CORRAL_HOME"] = str(home)
    env.pop("COLUMNS", None)
    return env


def serve_once(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``corral serve --home HOME ARGS...`` run to its end (for runs that must not start)."""
    return subprocess.run(
        [sys.executable, "-m", "corral", "serve", "--home", str(home), *args],
        env=user_env(home),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=home,
    )


class Served(ServeProcess):
    """``corral serve`` with its node up; the helpers are reachable from it too."""

    wait_until = staticmethod(wait_until)
    pid_alive = staticmethod(pid_alive)


def start_served(home: Path, config: str = CONFIG) -> Served:
    served = Served(home, config)
    served.start()
    served.wait_nodes()
    return served


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A ``corral serve`` with its node up, shared by the tests of one module."""
    server = start_served(tmp_path_factory.mktemp("e2e") / "home")
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()


@dataclass
class Run:
    """One CLI run: its exit code and its output."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


Cli = Callable[..., Run]


def run_cli(home: Path, command: str, timeout: float = 30.0) -> Run:
    """The corral CLI run as the user of ``home`` would (``command`` split as a POSIX shell
    splits it)."""
    done = subprocess.run(
        [sys.executable, "-m", "corral", *shlex.split(command)],
        env=user_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def cli(served: Served) -> Cli:
    """``cli("process list --json")`` runs the corral CLI as the user would."""

    def run(command: str, timeout: float = 30.0) -> Run:
        return run_cli(served.home, command, timeout)

    return run


CHROMIUM = "/usr/bin/chromium"
#: the dashboard's pages are shot at this size (docs/screenshots)
VIEWPORT = {"width": 1280, "height": 800}
#: flags that keep Chromium off the network it has no business with
CHROMIUM_FLAGS = [
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-gpu",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's headless Chromium, through Playwright, for one test module.

    Not for the session: Playwright's synchronous API keeps an event loop running on the
    main thread while it is open, and later tests that call ``asyncio.run`` would fail.
    """
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing; .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    # Chromium's own scratch files go to a directory this fixture removes
    scratch = tempfile.mkdtemp(prefix="corral-chromium-")
    try:
        with sync_playwright() as playwright:
            launched = playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_FLAGS, env={**os.environ, "TMPDIR": scratch}
            )
            try:
                yield launched
            finally:
                launched.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class Dashboard:
    """Opens pages of a served dispatcher's dashboard, each in a browser context of its own
    (its own cookies), logged in with a token or not at all; closes them all at the end."""

    def __init__(self, browser: Browser, served: ServeProcess) -> None:
        self.browser = browser
        self.served = served
        self._contexts: list[Any] = []

    def anonymous(self) -> Page:
        context = self.browser.new_context(viewport=VIEWPORT)
        self._contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(DEADLINE * 1000)
        return page

    def log_in(self, token: str | None = None, route: str = "") -> Page:
        """A page logged in with ``token`` (the API token by default), at ``#/route``."""
        page = self.anonymous()
        page.goto(f"{self.served.url}/ui/")
        page.fill("#token", token or self.served.token)
        page.click("button[type=submit]")
        page.wait_for_selector("body[data-loaded]", state="attached")
        if route:
            self.go(page, route)
        return page

    def go(self, page: Page, route: str) -> None:
        """Show ``#/route`` and wait until its data is on the page."""
        page.evaluate("delete document.body.dataset.loaded")
        page.goto(f"{self.served.url}/ui/#/{route}")
        page.wait_for_selector("body[data-loaded]", state="attached")

    def close(self) -> None:
        for context in self._contexts:
            with contextlib.suppress(Exception):
                context.close()


@pytest.fixture
def dashboard(browser: Browser, served: Served) -> Iterator[Dashboard]:
    opened = Dashboard(browser, served)
    try:
        yield opened
    finally:
        opened.close()
