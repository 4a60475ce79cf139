"""Code and data across the wire.

Data goes as a plain pickle when it can (fast) and as a cloudpickle otherwise (lambdas,
closures). Code goes by value: the module of a shipped function or class is pickled with it,
unless it is importable on every node anyway (the standard library, installed packages and
corral itself). On the worker, names that were shipped by value resolve to the shipped objects,
so a plain pickle of an instance of a shipped class loads there.

Only the worker loads pickles from its client and only the client loads pickles from its
workers, and each only after the peer proved it holds the computation's secret.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import pickle
import sys
import sysconfig
import types
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Final

import cloudpickle  # type: ignore[import-untyped]  # cloudpickle ships no type information

from corral.compute.messages import File

DEFAULT_MAX_FILE_SIZE: Final = 64 << 20

_INSTALLED: Final = tuple(
    str(Path(p).resolve())
    for key in ("stdlib", "platstdlib", "purelib", "platlib")
    if (p := sysconfig.get_paths().get(key))
)


def _importable_everywhere(module: types.ModuleType) -> bool:
    name = module.__name__
    if name == "__main__":
        return False  # cloudpickle ships __main__ by value by itself
    if name == "corral" or name.startswith("corral.") or name in sys.builtin_module_names:
        return True
    path = getattr(module, "__file__", None)
    return path is None or str(Path(path).resolve()).startswith(_INSTALLED)


def _modules_to_ship(objects: list[Any]) -> list[types.ModuleType]:
    found: dict[str, types.ModuleType] = {}
    for obj in objects:
        module = sys.modules.get(getattr(obj, "__module__", "") or "")
        if module is not None and not _importable_everywhere(module):
            found[module.__name__] = module
    return list(found.values())


@contextlib.contextmanager
def _by_value(objects: list[Any]) -> Iterator[None]:
    modules = _modules_to_ship(objects)
    for module in modules:
        cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        for module in modules:
            cloudpickle.unregister_pickle_by_value(module)


def dumps_code(objects: dict[int, Any]) -> bytes:
    """Pickle functions and classes (keyed by code id) with their own modules' code."""
    with _by_value(list(objects.values())):
        return cloudpickle.dumps(objects)  # type: ignore[no-any-return]


def dumps(obj: Any) -> bytes:
    """Pickle data: plain pickle if it can, cloudpickle for what plain pickle refuses."""
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError):
        return cloudpickle.dumps(obj)  # type: ignore[no-any-return]


class CodeTable:
    """The client's functions and classes by code id, each pickled once.

    The components are numbered first and travel in every worker's Setup; a function first
    run later gets the next id and travels once per worker, in a Code message.
    """

    def __init__(self, components: Iterable[Any]) -> None:
        self._ids: dict[int, int] = {}
        self._objects: dict[int, Any] = {}  # strong references keep the id()s unique
        self._blobs: dict[int, bytes] = {}
        for component in components:
            self.id_of(component)
        self.setup_ids = frozenset(self._objects)
        self.setup_blob = dumps_code(dict(self._objects))

    def id_of(self, func: Any) -> int:
        code_id = self._ids.get(id(func))
        if code_id is None:
            code_id = self._ids[id(func)] = len(self._objects) + 1
            self._objects[code_id] = func
        return code_id

    def blob(self, code_id: int) -> bytes:
        blob = self._blobs.get(code_id)
        if blob is None:
            blob = self._blobs[code_id] = dumps_code({code_id: self._objects[code_id]})
        return blob


class Shipped:
    """The worker's table of shipped functions and classes, by (module, qualified name)."""

    def __init__(self) -> None:
        self._by_name: dict[tuple[str, str], Any] = {}

    def add(self, obj: Any) -> None:
        module, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if isinstance(module, str) and isinstance(name, str):
            self._by_name[(module, name)] = obj

    def loads(self, blob: bytes) -> Any:
        return _Unpickler(io.BytesIO(blob), self._by_name).load()


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, shipped: dict[tuple[str, str], Any]) -> None:
        super().__init__(file)
        self._shipped = shipped

    def find_class(self, module: str, name: str) -> Any:
        found = self._shipped.get((module, name))
        if found is not None:
            return found
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError) as exc:
            raise ImportError(
                f"{module}.{name} is not importable on this worker: "
                "list it (or its module) in the computation's components"
            ) from exc


def loads(blob: bytes) -> Any:
    """The client's side: load what a worker sent (results, exceptions, messages)."""
    return pickle.loads(blob)


def component_files(components: list[Any], max_file_size: int) -> tuple[list[File], list[str]]:
    """The files to ship for path and module components, and the modules to import.

    A module component ships its source file and is imported on the worker from its working
    directory. Raises ValueError naming a component that cannot be shipped.
    """
    files: list[File] = []
    modules: list[str] = []
    for component in components:
        if isinstance(component, types.ModuleType):
            source = getattr(component, "__file__", None)
            if source is None or Path(source).name == "__init__.py":
                raise ValueError(
                    f"module {component.__name__} is not a single source file: "
                    "ship its files as paths, or install it on the nodes"
                )
            files.append(_read(Path(source), max_file_size))
            modules.append(component.__name__.rpartition(".")[2])
        elif isinstance(component, (str, Path)):
            files.append(_read(Path(component), max_file_size))
    return files, modules


def _read(path: Path, max_file_size: int) -> File:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ValueError(f"component {path}: {exc.strerror}") from None
    if size > max_file_size:
        raise ValueError(f"component {path} has {size} bytes, above max_file_size {max_file_size}")
    return File(path.name, path.read_bytes())


def is_code(component: Any) -> bool:
    """Whether a component is a function or a class (shipped by value and named by id)."""
    return inspect.isfunction(component) or inspect.isclass(component)


def accepts_task(func: Any) -> bool:
    """Whether ``func`` takes a ``task`` parameter (the worker then passes the task's handle)."""
    try:
        return "task" in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
