"""Model families by recipe ``task``: the registry behind the one pipeline, CLI and Python API.

Built-in families are named here by import path and imported on first use, so
``import edgecompress`` and ``edgecompress --help`` stay light (the text family needs the
``text`` extra only when a text recipe runs). A family of your own::

    from edgecompress.families import ModelFamily, register_family

    @register_family
    class DetectionFamily(ModelFamily):
        task = "object-detection"
        ...
"""

from __future__ import annotations

import importlib
from typing import Any, TypeVar

from edgecompress.errors import ConfigError
from edgecompress.families.base import ModelFamily

__all__ = ["DEFAULT_TASK", "ModelFamily", "family_for", "get_family", "load_any_recipe",
           "parse_any_recipe", "register_family", "tasks"]

#: A recipe without ``task`` is an image-classification recipe (every recipe before families).
DEFAULT_TASK = "image-classification"

_BUILTIN = {
    "image-classification": "edgecompress.families.image:ImageFamily",
    "text-classification": "edgecompress.text.family:TextFamily",
}
_REGISTRY: dict[str, ModelFamily] = {}
_F = TypeVar("_F", bound=type[ModelFamily])


def register_family(cls: _F) -> _F:
    """Class decorator: make ``cls`` the family of recipes whose ``task`` is ``cls.task``.

    Raises:
        ConfigError: ``cls`` has no ``task``, or another class already claimed it.
    """
    task = getattr(cls, "task", None)
    if not isinstance(task, str) or not task:
        raise ConfigError(f"model family {cls.__qualname__} has no 'task'")
    current = _REGISTRY.get(task)
    if current is not None and type(current) is not cls:
        raise ConfigError(f"task {task!r} is already the family {type(current).__qualname__}")
    _REGISTRY[task] = cls()
    return cls


def tasks() -> list[str]:
    """Every known task (built-in and registered), sorted."""
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def get_family(task: str) -> ModelFamily:
    """The family registered for ``task`` (built-ins imported on first use).

    Raises:
        ConfigError: unknown task, naming the known ones.
    """
    if task not in _REGISTRY and task in _BUILTIN:
        module, _, name = _BUILTIN[task].partition(":")
        register_family(getattr(importlib.import_module(module), name))
    try:
        return _REGISTRY[task]
    except KeyError:
        raise ConfigError(f"task: unknown task {task!r}; known tasks: "
                          f"{', '.join(tasks())}") from None


def family_for(raw: Any) -> ModelFamily:
    """The family a parsed recipe mapping (or a parsed recipe object) asks for by ``task``."""
    task = raw.get("task", DEFAULT_TASK) if isinstance(raw, dict) else \
        getattr(raw, "task", DEFAULT_TASK)
    if not isinstance(task, str):
        raise ConfigError(f"task: must be a string naming a task ({', '.join(tasks())}), got "
                          f"{type(task).__name__}")
    return get_family(task)


def parse_any_recipe(raw: Any, *, source: str = "<recipe>", base_dir: Any = None) -> Any:
    """Validate a parsed recipe mapping with the parser of the family its ``task`` names."""
    return family_for(raw).parse_recipe(raw if raw is not None else {}, source=source,
                                        base_dir=base_dir)


def load_any_recipe(path: Any) -> Any:
    """Read a recipe YAML file of any task (relative paths resolve against its directory).

    Raises:
        ConfigError: unreadable file, unknown task, or invalid keys (each named).
    """
    from edgecompress.recipe import load_recipe_file

    return load_recipe_file(path, parse_any_recipe)
