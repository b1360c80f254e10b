"""Load teacher/student models as a recipe describes them: builtin, factory, TorchScript, export.

Checkpoints are user files, so every failure (missing file, corrupt bytes, pickled code, keys that
do not match the model) becomes a :class:`ModelError` naming the file, key or shape at fault
instead of a deep torch traceback. Pickled Python code is refused unless the recipe explicitly
sets ``trust_pickle: true``, because ``torch.load(weights_only=False)`` executes it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecompress.errors import ConfigError, ModelError
from edgecompress.models.tiny import build_builtin
from edgecompress.models.weights import (  # noqa: F401  (re-exported)
    TORCH_SUFFIXES,
    load_weights,
    read_state_dict,
    short_error,
)

logger = logging.getLogger(__name__)

KINDS = ("builtin", "factory", "zoo", "torchscript", "export")


def load_model(kind: str, *, family: str | None = None, width: float = 1.0, depth: int = 1,
               factory: str | None = None, kwargs: dict | None = None,
               weights: str | Path | None = None, path: str | Path | None = None,
               trust_pickle: bool = False, num_classes: int, in_channels: int,
               model_id: str | None = None, id_classes: int | None = None,
               role: str = "teacher") -> nn.Module:
    """Build or load a model as described by a recipe's teacher/student section.

    Args:
        kind: ``"builtin"``, ``"factory"``, ``"torchscript"`` or ``"export"``.
        family: Built-in family (kind ``builtin``).
        width: Built-in width multiplier.
        depth: Built-in blocks per stage.
        factory: ``"package.module:callable"`` or ``"path/to/file.py:callable"`` (kind
            ``factory``).
        kwargs: Keyword arguments for the factory callable.
        weights: Optional ``.pt``/``.pth``/``.bin``/``.ckpt``/``.safetensors`` state dict loaded
            into the model after it is built.
        path: TorchScript file (kind ``torchscript``) or ``.pt2`` file (kind ``export``).
        trust_pickle: Allow checkpoints that contain pickled Python code (executes it).
        num_classes: Classes in the dataset (used by built-in and zoo models).
        in_channels: Image channels in the dataset (used by built-in models).
        model_id: ``torchvision:<name>``, ``timm:<name>`` or ``hf:<dir>`` (kind ``zoo``).
        id_classes: Classes the zoo model and its weights were built with; the head is
            swapped for ``num_classes`` after the weights load when they differ.
        role: ``"teacher"`` or ``"student"``; used in error messages.

    Returns:
        The model in eval mode on the CPU.

    Raises:
        ConfigError: If ``kind`` is unknown or a field it needs is missing.
        ModelError: If a file is missing, corrupt, refused or does not fit the model.
    """
    if kind == "builtin":
        if family is None:
            raise ConfigError(f"{role}: kind 'builtin' needs 'family' (one of resnet, mobilenet)")
        model = build_builtin(family, num_classes=num_classes, in_channels=in_channels,
                              width=width, depth=depth)
    elif kind == "factory":
        if not factory:
            raise ConfigError(f"{role}: kind 'factory' needs 'factory' "
                              "('package.module:callable' or 'file.py:callable')")
        model = _call_factory(factory, kwargs or {}, role)
    elif kind == "zoo":
        if not model_id:
            raise ConfigError(f"{role}: kind 'zoo' needs 'id' (e.g. 'torchvision:resnet18')")
        from edgecompress.models.zoo import build_zoo_model

        model = build_zoo_model(model_id, num_classes=id_classes or num_classes,
                                kwargs=kwargs, role=role)
    elif kind == "torchscript":
        model = _load_torchscript(_need_path(path, kind, role), role)
    elif kind == "export":
        model = _load_exported(_need_path(path, kind, role), role)
    else:
        raise ConfigError(f"{role}: unknown model kind {kind!r}; known kinds: {', '.join(KINDS)}")
    if weights is not None:
        load_weights(model, weights, trust_pickle=trust_pickle, role=role)
    if kind == "zoo" and id_classes is not None and id_classes != num_classes:
        from edgecompress.models.heads import replace_head

        replace_head(model, num_classes)
    set_mode(model, training=False)
    logger.info("loaded %s model (kind=%s)", role, kind)
    return model


def set_mode(model: nn.Module, *, training: bool) -> None:
    """Switch train/eval mode, tolerating ``torch.export`` modules that refuse to switch."""
    try:
        model.train(training)
    except NotImplementedError:
        logger.debug("model %s does not support train()/eval(); mode unchanged",
                     type(model).__name__)


def _need_path(path: str | Path | None, kind: str, role: str) -> Path:
    """Return ``path`` as an existing file, or fail naming the role and path."""
    if path is None:
        raise ConfigError(f"{role}: kind {kind!r} needs 'path'")
    file = Path(path)
    if not file.is_file():
        raise ModelError(f"{role} model file not found: {file}")
    return file


# --------------------------------------------------------------------------- factory


def _import_file(file: Path, spec_text: str) -> Any:
    """Import a Python file as a uniquely named module (registered so pickling works)."""
    if not file.is_file():
        raise ModelError(f"factory {spec_text!r}: file not found: {file}")
    digest = hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:12]
    name = f"edgecompress_user_{file.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ModelError(f"factory {spec_text!r}: cannot import {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # a module calling sys.exit() is bad input too
        del sys.modules[name]
        raise ModelError(f"factory {spec_text!r}: importing {file} failed: "
                         f"{short_error(exc)}") from exc
    return module


def _import_module(module_name: str, spec_text: str) -> Any:
    """Import ``module_name``, telling a missing module apart from one that fails to import."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == module_name or module_name.startswith(exc.name + ".")):
            raise ModelError(f"factory {spec_text!r}: module {module_name!r} not found "
                             "(is it installed or on PYTHONPATH?)") from exc
        raise ModelError(f"factory {spec_text!r}: importing {module_name!r} failed: "
                         f"{short_error(exc)}") from exc
    except (Exception, SystemExit) as exc:
        raise ModelError(f"factory {spec_text!r}: importing {module_name!r} failed: "
                         f"{short_error(exc)}") from exc


def resolve_factory(spec_text: str) -> Callable[..., Any]:
    """Resolve ``"package.module:callable"`` or ``"path/to/file.py:callable"`` to the callable.

    The attribute may be dotted (``module:Class.create``).

    Raises:
        ModelError: If the spec is malformed, the module/file/attribute is missing, or the
            attribute is not callable.
    """
    module_part, sep, attr = spec_text.rpartition(":")
    if not sep or not module_part or not attr:
        raise ModelError(f"factory {spec_text!r} must look like 'package.module:callable' or "
                         "'path/to/file.py:callable'")
    if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
        module = _import_file(Path(module_part), spec_text)
    else:
        module = _import_module(module_part, spec_text)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"factory {spec_text!r}: {module_part!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelError(f"factory {spec_text!r}: {attr!r} is a {type(obj).__name__}, "
                         "not a callable")
    return obj


def _call_factory(spec_text: str, kwargs: dict, role: str) -> nn.Module:
    """Call the factory with ``kwargs`` and check it returned an ``nn.Module``."""
    fn = resolve_factory(spec_text)
    try:
        model = fn(**kwargs)
    except (Exception, SystemExit) as exc:  # sys.exit(7) in a factory must not end the tool
        raise ModelError(f"{role} factory {spec_text!r} raised with kwargs {sorted(kwargs)}: "
                         f"{short_error(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"{role} factory {spec_text!r} returned {type(model).__name__}, "
                         "expected a torch.nn.Module")
    return model


# --------------------------------------------------------------------------- whole-model files


def _load_torchscript(file: Path, role: str) -> nn.Module:
    """``torch.jit.load`` on the CPU, with a ModelError naming the file on failure."""
    try:
        return torch.jit.load(str(file), map_location="cpu")
    except Exception as exc:
        raise ModelError(f"{role} TorchScript file {file} cannot be loaded (corrupt, or not a "
                         f"TorchScript archive): {short_error(exc)}") from exc


def _load_exported(file: Path, role: str) -> nn.Module:
    """``torch.export.load(path).module()``, with a ModelError naming the file on failure."""
    try:
        return torch.export.load(str(file)).module()
    except Exception as exc:
        raise ModelError(f"{role} torch.export file {file} cannot be loaded (corrupt, or not a "
                         f".pt2 ExportedProgram): {short_error(exc)}") from exc


# --------------------------------------------------------------------------- sanity check


def check_model_io(model: nn.Module, input_shape: tuple[int, int, int], num_classes: int | None,
                   *, role: str = "teacher") -> None:
    """Run one forward on zeros so a model/dataset mismatch fails before any training starts.

    Args:
        model: The model to probe; its train/eval mode is restored afterwards.
        input_shape: ``(C, H, W)`` of one dataset sample.
        num_classes: Expected logits size, or None to skip the output check.
        role: ``"teacher"`` or ``"student"``; used in error messages.

    Raises:
        ModelError: If the forward fails or the output is not ``(2, num_classes)``.
    """
    shape = (2, *tuple(input_shape))
    was_training = model.training
    set_mode(model, training=False)
    try:
        with torch.no_grad():
            out = model(torch.zeros(shape))
    except Exception as exc:
        raise ModelError(f"{role} model fails on input shape {shape} from the dataset: "
                         f"{short_error(exc)}") from exc
    finally:
        set_mode(model, training=was_training)
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"{role} model returns a {type(out).__name__} for input shape {shape}; "
                         "expected a logits tensor")
    if num_classes is not None and tuple(out.shape) != (2, num_classes):
        raise ModelError(f"{role} model output shape {tuple(out.shape)} for input shape {shape} "
                         f"does not match the expected (2, {num_classes}) (batch, num_classes)")
