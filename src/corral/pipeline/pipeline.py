"""A pipeline: its event table, and where the table's actions are found.

The event table maps an event name to ``(action, new state, next event)``. An action is a
method of the pipeline, a function of the pipeline's module, or a primitive found on the
pipeline's ``primitive_path`` (packages whose snake_case modules hold a CamelCase class:
``simple_fits_reader`` → ``SimpleFitsReader``), or a dotted ``module.Class`` path.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
from collections.abc import Callable
from typing import Any, ClassVar

from corral.pipeline.primitives import Action, BasePrimitive, ProcessingContext

Handler = Callable[[Action, ProcessingContext], Any]
TableEntry = tuple[str | None, str | None, str | None]


class UnknownEvent(LookupError):
    """An event the pipeline's table does not name, or whose action cannot be found."""


class BasePipeline:
    #: event name → (action, new state, next event)
    event_table: ClassVar[dict[str, TableEntry]] = {}
    #: packages searched for primitives, in order
    primitive_path: ClassVar[tuple[str, ...]] = ()

    def __init__(self, context: ProcessingContext) -> None:
        self.context = context
        self.logger = context.logger
        self._handlers: dict[str, Handler | None] = {}

    @classmethod
    def queue_name(cls) -> str:
        """The shared queue this pipeline's processes use."""
        return cls.__name__

    def entry(self, event: str) -> TableEntry:
        try:
            return self.event_table[event]
        except KeyError:
            raise UnknownEvent(f"{type(self).__name__} has no event {event!r}") from None

    def handler(self, action: str) -> Handler:
        if action not in self._handlers:
            self._handlers[action] = self._find(action)
        found = self._handlers[action]
        if found is None:
            where = ", ".join(self.primitive_path) or "no primitive_path"
            raise UnknownEvent(
                f"action {action!r} is no method of {type(self).__name__}, no function of its "
                f"module, and no primitive on its path ({where})"
            )
        return found

    def _find(self, action: str) -> Handler | None:
        method = getattr(self, action, None)
        if callable(method):
            return method  # type: ignore[no-any-return]
        function = getattr(sys.modules[type(self).__module__], action, None)
        if inspect.isfunction(function):
            return function
        class_name = "".join(part.capitalize() for part in action.split("_"))
        candidates = [f"{package}.{action}" for package in self.primitive_path]
        if "." in action:
            module_name, _, class_name = action.rpartition(".")
            candidates = [module_name]
        for module_name in candidates:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError:
                continue
            primitive = getattr(module, class_name, None)
            if inspect.isclass(primitive) and issubclass(primitive, BasePrimitive):
                return _run_primitive(primitive)
        return None

    def on_error(self, action: Action, context: ProcessingContext, error: BaseException) -> None:
        """Called when an action raises or its post-condition fails; logs by default."""
        self.logger.error(
            "event %s (action %s) failed: %s", action.event, action.name, error, exc_info=error
        )


def _run_primitive(primitive: type[BasePrimitive]) -> Handler:
    def run(action: Action, context: ProcessingContext) -> Any:
        return primitive(action, context)()

    run.__name__ = primitive.__name__
    return run


def load_pipeline(spec: str) -> type[BasePipeline]:
    """``package.module:Class``, ``package.module.Class``, or a module holding one pipeline."""
    module_name, _, class_name = spec.partition(":")
    module: types.ModuleType | None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        module_name, _, class_name = spec.rpartition(".")
        try:
            module = importlib.import_module(module_name) if module_name else None
        except ModuleNotFoundError:
            module = None
    if module is None:
        raise ValueError(f"no pipeline module {spec!r} on the Python path")
    if class_name:
        found = getattr(module, class_name, None)
        if inspect.isclass(found) and issubclass(found, BasePipeline):
            return found
        raise ValueError(f"{module.__name__} has no pipeline class {class_name!r}")
    pipelines = list(
        dict.fromkeys(
            obj
            for obj in vars(module).values()
            if inspect.isclass(obj) and issubclass(obj, BasePipeline) and obj is not BasePipeline
        )
    )
    if len(pipelines) != 1:
        raise ValueError(
            f"{module.__name__} holds {len(pipelines)} pipelines: name one as module:Class"
        )
    return pipelines[0]
