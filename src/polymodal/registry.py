"""One registry mechanism for every pluggable part.

A `Registry` maps explicit names to classes or factory functions. Every config names its
type explicitly (`type: cross_transformer`); `build()` dispatches on that field and checks
that every other key is a parameter of the constructor, so a typo is an error naming the key.
"""
from __future__ import annotations

import inspect
import typing
from typing import Any, Callable

from polymodal.errors import ConfigError

REGISTRIES: dict[str, "Registry"] = {}


class Registry:
    """Name -> constructor table for one kind of part (models, fusions, metrics, ...)."""

    def __init__(self, kind: str):
        if kind in REGISTRIES:
            raise ValueError(f"registry {kind!r} exists already")
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}
        REGISTRIES[kind] = self

    def register(self, name: str | None = None) -> Callable:
        """Decorator: `@FUSIONS.register("concat")`. A duplicate name is an error."""

        def deco(obj):
            key = name or obj.__name__
            if key in self._entries and self._entries[key] is not obj:
                raise ValueError(f"{self.kind} {key!r} is registered twice "
                                 f"({self._entries[key]!r} and {obj!r})")
            self._entries[key] = obj
            return obj

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._entries)) or '(none)'}")
        return self._entries[name]

    def accepts(self, name: str | None, argument: str) -> bool:
        """Whether the entry `name` (when registered) takes a keyword `argument`."""
        return name in self._entries and argument in _params(self._entries[name])

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def build(self, spec: dict, where: str = "config", **injected: Any) -> Any:
        """Build the entry named by `spec["type"]` with the spec's other keys as keyword arguments.

        Args:
            spec: a mapping with a `type` key naming a registered entry.
            where: the config location, for error messages (`file.yaml: model.fusion`).
            injected: arguments supplied by the caller (e.g. feature dims), not by the user.
        """
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected a mapping with a 'type' key, got {type(spec).__name__}")
        if "type" not in spec:
            raise ConfigError(f"{where}: missing 'type'; one of: {', '.join(self.names())}")
        ctor = self.get(spec["type"]) if spec["type"] in self._entries else None
        if ctor is None:
            raise ConfigError(f"{where}.type: unknown {self.kind} {spec['type']!r}; "
                              f"known: {', '.join(self.names())}")
        kwargs = {k: v for k, v in spec.items() if k != "type"}
        check_kwargs(ctor, kwargs, where, injected=set(injected))
        return ctor(**kwargs, **injected)


def _params(ctor: Callable) -> dict[str, inspect.Parameter]:
    target = ctor.__init__ if inspect.isclass(ctor) else ctor
    sig = inspect.signature(target)
    return {n: p for n, p in sig.parameters.items()
            if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def check_kwargs(ctor: Callable, kwargs: dict, where: str, injected: set[str] = frozenset()) -> None:
    """Raise ConfigError for unknown keys, missing required keys and plainly wrong types."""
    params = _params(ctor)
    for key in kwargs:
        if key in injected:
            raise ConfigError(f"{where}.{key}: set by polymodal, not by the config; remove it")
        if key not in params:
            raise ConfigError(f"{where}.{key}: unknown key for {getattr(ctor, '__name__', ctor)}; "
                              f"allowed: {', '.join(k for k in params if k not in injected)}")
    for name, p in params.items():
        if p.default is inspect.Parameter.empty and name not in kwargs and name not in injected:
            raise ConfigError(f"{where}: missing required key {name!r}")
    try:
        hints = typing.get_type_hints(ctor.__init__ if inspect.isclass(ctor) else ctor)
    except Exception:  # unresolvable forward references: skip type checks
        hints = {}
    for key, value in kwargs.items():
        if key in hints and not type_ok(value, hints[key]):
            raise ConfigError(f"{where}.{key}: expected {_type_name(hints[key])}, got {value!r}")


def type_ok(value: Any, hint: Any) -> bool:
    """A shallow check of a config value against an annotation (enough to catch `dim: "64"`)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in (list, tuple, typing.Sequence):
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


class _TaskRegistry(Registry):
    """The task registry holds Task objects (`polymodal.tasks.register_task`), never classes:
    a training objective registered here by mistake (the registry of objectives was once
    called TASKS) is an error that says where it belongs."""

    def register(self, name: str | None = None) -> Callable:
        deco = super().register(name)

        def check(obj):
            if isinstance(obj, type):
                raise ValueError(f"{obj.__name__}: TASKS holds Task objects (@polymodal.tasks.register_task); "
                                 "training objectives register in polymodal.registry.OBJECTIVES")
            return deco(obj)

        return check


# The registries of the package. Modules register into these at import.
MODELS = Registry("model")          # whole-model families (dual_encoder, fusion_encoder, ...)
VISION = Registry("vision encoder")
TEXT = Registry("text encoder")
DECODERS = Registry("decoder")
FUSIONS = Registry("fusion")
RECIPES = Registry("recipe")        # named model configurations: name -> function returning a spec
DATASETS = Registry("dataset format")
TASKS = _TaskRegistry("task")       # Task objects (polymodal.tasks), one per task
OBJECTIVES = Registry("objective")  # training losses (polymodal.train.objectives)
METRICS = Registry("metric")
