"""The public surface of ``corral`` is pinned, and the client-side packages stay in layer."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import corral
import corral.errors

PUBLIC = [
    "AsyncClient",
    "Client",
    "Conflict",
    "CorralError",
    "Forbidden",
    "IllegalTransition",
    "InvalidRequest",
    "NotFound",
    "StoreError",
    "Unauthorized",
    "Unavailable",
    "WaitTimeout",
    "__version__",
]
SOURCE = Path(corral.__file__).parent


def test_all_is_pinned() -> None:
    assert sorted(corral.__all__) == PUBLIC


def test_every_exported_name_resolves() -> None:
    for name in corral.__all__:
        assert getattr(corral, name) is not None
    assert corral.NotFound is corral.errors.NotFound
    assert corral.Client.__module__ == "corral.client.sync"
    assert corral.AsyncClient.__module__ == "corral.client.aio"
    assert isinstance(corral.__version__, str)


def test_importing_corral_does_not_import_httpx() -> None:
    # the node agent and corral.core import the package root; they must stay light
    code = (
        "import sys, corral, corral.errors; assert 'httpx' not in sys.modules; "
        "corral.Client; assert 'httpx' in sys.modules"
    )
    env = {**os.environ, "PYTHONPATH": str(SOURCE.parent)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr.decode()


def corral_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {name for name in names if name == "corral" or name.startswith("corral.")}


def outside(
    package: str, allowed: tuple[str, ...], skip: tuple[str, ...] = ()
) -> dict[str, set[str]]:
    found = {}
    for module in sorted((SOURCE / package).rglob("*.py")):
        if module.name in skip:
            continue
        bad = {
            name
            for name in corral_imports(module)
            if not any(name == a or name.startswith(f"{a}.") for a in allowed)
        }
        if bad:
            found[str(module.relative_to(SOURCE))] = bad
    return found


def test_client_imports_only_errors_and_tls() -> None:
    # corral.tls: an https dispatcher is verified with the certificate its home publishes
    assert outside("client", ("corral.errors", "corral.client", "corral.tls")) == {}


def test_api_imports_only_errors_and_itself() -> None:
    # the package root only for __version__; the service arrives through a Protocol
    assert outside("api", ("corral.errors", "corral.api")) == {"api/app.py": {"corral"}}


def test_cli_imports_only_the_client_side() -> None:
    # corral.secretfile: `corral node token` derives a node's agent token from the home's
    # secret, where the dispatcher runs, with no dispatcher code
    allowed = ("corral.errors", "corral.client", "corral.cli", "corral.secretfile")
    # serve.py runs the dispatcher and pipeline.py a pipeline in the CLI's own process
    found = outside("cli", allowed, skip=("serve.py", "pipeline.py"))
    assert found == {"cli/__init__.py": {"corral"}}  # for __version__ only
