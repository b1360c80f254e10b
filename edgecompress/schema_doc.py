"""``edgecompress schema``: a recipe schema written out as commented YAML, every key with its
default and its description, for any task.

Generated from the pydantic models (the one place defaults live), so it cannot drift from what
``validate`` accepts. Pydantic's JSON schema says the same in a form few people read; this is
the form a recipe is written in.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

REQUIRED = "<required>"


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The pydantic model an annotation holds (directly, optional, or as list items), and
    whether it is a list of them."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (list, tuple) and args:
        inner, _ = _model_in(args[0])
        return inner, inner is not None
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            inner, is_list = _model_in(arg)
            if inner is not None:
                return inner, is_list
    return None, False


def _default(field: Any) -> Any:
    if field.default is not PydanticUndefined:
        return field.default
    if field.default_factory is not None:
        try:
            return field.default_factory()
        except TypeError:  # factories that take the validated data
            return None
    return PydanticUndefined


def _scalar(value: Any) -> str:
    if value is PydanticUndefined:
        return REQUIRED
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    try:
        return json.dumps(value)
    except TypeError:
        return json.dumps(str(value))


def _comment(text: str | None) -> str:
    return f"  # {' '.join(text.split())}" if text else ""


def render_schema(model: type[BaseModel], indent: int = 0) -> list[str]:
    """Commented YAML lines for ``model``'s fields (nested sections indented)."""
    pad = "  " * indent
    lines: list[str] = []
    for name, field in model.model_fields.items():
        inner, is_list = _model_in(field.annotation)
        default = _default(field)
        if inner is None:
            lines.append(f"{pad}{name}: {_scalar(default)}{_comment(field.description)}")
            continue
        doc = field.description or (inner.__doc__ or "").strip().split("\n")[0]
        if is_list:
            shown = _scalar([_dump(v) for v in default]) if isinstance(default, (list, tuple)) \
                else _scalar(default)
            lines += [f"{pad}{name}:{_comment(doc)}", f"{pad}  # default: {shown}",
                      f"{pad}  # each item:"]
            lines += render_schema(inner, indent + 2)
        elif default is None:  # an optional section, off unless given
            lines += [f"{pad}{name}: null{_comment(doc)}", f"{pad}  # when given:"]
            lines += render_schema(inner, indent + 1)
        else:
            lines.append(f"{pad}{name}:{_comment(doc)}")
            lines += render_schema(inner, indent + 1)
    return lines


def _dump(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def schema_text(model: type[BaseModel], task: str) -> str:
    """The whole commented schema of a task's recipe."""
    head = [f"# edgecompress recipe schema, task: {task}",
            f"# {REQUIRED}: no default, the recipe must give it; every other key may be left out.",
            ""]
    return "\n".join(head + render_schema(model)) + "\n"
