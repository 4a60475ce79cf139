"""corral.store imports nothing from corral but corral.errors (and itself)."""

from __future__ import annotations

import ast
from pathlib import Path

import corral.store

ALLOWED = ("corral.errors", "corral.store")


def corral_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {name for name in names if name == "corral" or name.startswith("corral.")}


def test_store_modules_import_only_corral_errors() -> None:
    package = Path(corral.store.__file__).parent
    modules = sorted(package.glob("*.py"))
    assert len(modules) >= 5
    for module in modules:
        outside = {
            name
            for name in corral_imports(module)
            if not any(name == ok or name.startswith(ok + ".") for ok in ALLOWED)
        }
        assert not outside, f"{module.name} imports {sorted(outside)}"
        assert not any(
            isinstance(node, ast.ImportFrom) and node.level > 0
            for node in ast.walk(ast.parse(module.read_text()))
        ), f"{module.name} uses a relative import; spell corral.store out"
