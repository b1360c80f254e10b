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
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecompress.errors import BackendUnavailable, ConfigError, ModelError
from edgecompress.models.tiny import build_builtin

logger = logging.getLogger(__name__)

KINDS = ("builtin", "factory", "zoo", "torchscript", "export")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_MAX_LISTED = 10


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


def _short(exc: BaseException, limit: int = 300) -> str:
    """One-line ``Type: message`` summary of an exception, for error messages."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > limit:
        first = first[:limit] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


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
        raise ModelError(f"factory {spec_text!r}: importing {file} failed: {_short(exc)}") from exc
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
                         f"{_short(exc)}") from exc
    except (Exception, SystemExit) as exc:
        raise ModelError(f"factory {spec_text!r}: importing {module_name!r} failed: "
                         f"{_short(exc)}") from exc


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
                         f"{_short(exc)}") from exc
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
                         f"TorchScript archive): {_short(exc)}") from exc


def _load_exported(file: Path, role: str) -> nn.Module:
    """``torch.export.load(path).module()``, with a ModelError naming the file on failure."""
    try:
        return torch.export.load(str(file)).module()
    except Exception as exc:
        raise ModelError(f"{role} torch.export file {file} cannot be loaded (corrupt, or not a "
                         f".pt2 ExportedProgram): {_short(exc)}") from exc


# --------------------------------------------------------------------------- weights


def _pickle_global(exc: BaseException) -> str | None:
    """Return the class/function a weights-only unpickle refused, or None if it was not that."""
    text = str(exc)
    # torch < 2.8: "Unsupported global: GLOBAL mod.fn was not an allowed global";
    # torch 2.13: "Trying to load unsupported GLOBAL posix.system whose module posix is blocked".
    match = re.search(r"GLOBAL\s+([\w.]+)", text)
    if match:
        return match.group(1)
    if re.search(r"unsupported global|not an allowed global", text, re.IGNORECASE):
        return "an unknown global"
    return None


def _unpickler_detail(exc: BaseException) -> str:
    """Short reason for a failed load, without torch's advice to retry with weights_only=False.

    That advice is wrong for a corrupt file and unsafe for an untrusted one.
    """
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        lines = [ln.strip() for ln in text.split(marker, 1)[1].splitlines() if ln.strip()]
        if lines:
            return f"{type(exc).__name__}: {lines[0]}"
    advice = ("weights_only", "Weights only load failed", "Check the documentation of torch.load")
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not any(a in ln for a in advice)]
    if lines and lines[0] != text.strip().splitlines()[0]:
        return f"{type(exc).__name__}: {lines[0][:300]}"
    if any(a in text for a in advice):
        return f"{type(exc).__name__}: not loadable as plain tensors"
    return _short(exc)


def _torch_load(file: Path, trust_pickle: bool, role: str) -> Any:
    """``torch.load`` safely by default; only ``trust_pickle`` allows executing pickled code."""
    try:
        return torch.load(str(file), map_location="cpu", weights_only=not trust_pickle)
    except Exception as exc:
        culprit = _pickle_global(exc) if not trust_pickle else None
        if culprit is not None:
            raise ModelError(
                f"{role} weights file {file} refers to the Python global {culprit}, which "
                "unpickling would import and call (pickled code); refusing. Re-save it as a "
                "plain state dict or .safetensors, "
                f"or, if you trust its source, set 'trust_pickle: true' in the recipe's {role} "
                "section.") from exc
        raise ModelError(f"{role} weights file {file} is corrupt, truncated or not a torch "
                         f"checkpoint: {_unpickler_detail(exc)}") from exc


def _safetensors_load(file: Path, role: str) -> dict[str, torch.Tensor]:
    """Load a ``.safetensors`` file; the package is an optional dependency."""
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise BackendUnavailable(f"{role} weights {file} are .safetensors but the 'safetensors' "
                                 "package is not installed (pip install "
                                 "'edgecompress[safetensors]')") from exc
    try:
        return load_file(str(file), device="cpu")
    except Exception as exc:
        raise ModelError(f"{role} weights file {file} is corrupt, truncated or not a "
                         f"safetensors file: {_short(exc)}") from exc


def _extract_state_dict(obj: Any, file: Path, role: str) -> dict[str, torch.Tensor]:
    """Accept a plain state dict, ``{"state_dict": ...}``, ``{"model": ...}`` or a whole module."""
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                return dict(inner.state_dict())
            if isinstance(inner, Mapping):
                obj = inner
                break
        bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        if not bad:
            return {str(k): v for k, v in obj.items()}
        raise ModelError(f"{role} weights file {file} holds no state dict: entries that are not "
                         f"tensors: {', '.join(bad[:_MAX_LISTED])}"
                         + (f" (+{len(bad) - _MAX_LISTED} more)" if len(bad) > _MAX_LISTED else "")
                         + "; expected a state dict, or a dict with 'state_dict' or 'model'")
    raise ModelError(f"{role} weights file {file} holds a {type(obj).__name__}, expected a state "
                     "dict (or a dict with 'state_dict' or 'model')")


def _strip_prefix(state: dict[str, torch.Tensor], expected: Mapping[str, Any]) -> dict:
    """Drop a ``module.`` prefix left by DataParallel/DDP when the model's keys lack it."""
    prefix = "module."
    if state and all(k.startswith(prefix) for k in state) and not any(
            k.startswith(prefix) for k in expected):
        logger.info("stripping %r prefix from checkpoint keys", prefix)
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _listing(items: list[str]) -> str:
    """Join up to ``_MAX_LISTED`` items, noting how many were left out."""
    text = "; ".join(items[:_MAX_LISTED])
    if len(items) > _MAX_LISTED:
        text += f"; ... (+{len(items) - _MAX_LISTED} more)"
    return text


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def _check_keys(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                file: Path, role: str) -> None:
    """Compare checkpoint and model keys/shapes, raising one ModelError that lists all problems.

    A missing BatchNorm ``num_batches_tracked`` counter is tolerated: it does not affect outputs
    and older or converted checkpoints often lack it.
    """
    missing = [f"{k} {_shape(v)}" for k, v in expected.items()
               if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [f"{k} {_shape(v)}" for k, v in state.items() if k not in expected]
    mismatched = [f"{k}: checkpoint {_shape(v)} vs model {_shape(expected[k])}"
                  for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    problems = []
    if mismatched:
        problems.append(f"shape mismatch: {_listing(mismatched)}")
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if problems:
        raise ModelError(f"{role} weights file {file} does not match the model: "
                         + " | ".join(problems))


def read_state_dict(weights: str | Path, *, trust_pickle: bool = False,
                    role: str = "teacher") -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.pt``/``.pth``/``.bin``/``.ckpt`` or ``.safetensors`` file.

    Raises:
        ModelError: If the file is missing, corrupt, has an unsupported suffix, contains
            pickled code (unless ``trust_pickle``) or holds no state dict.
    """
    file = Path(weights)
    if not file.is_file():
        raise ModelError(f"{role} weights file not found: {file}")
    suffix = file.suffix.lower()
    if suffix == ".safetensors":
        return _safetensors_load(file, role)
    if suffix in TORCH_SUFFIXES:
        return _extract_state_dict(_torch_load(file, trust_pickle, role), file, role)
    raise ModelError(f"{role} weights file {file}: unsupported suffix {file.suffix!r}; use one "
                     f"of {', '.join(TORCH_SUFFIXES)}, .safetensors")


def load_weights(model: nn.Module, weights: str | Path, *, trust_pickle: bool = False,
                 role: str = "teacher") -> None:
    """Load a checkpoint into ``model`` strictly, with errors listing the offending keys.

    Raises:
        ModelError: See :func:`read_state_dict`; also when keys or shapes do not match.
    """
    file = Path(weights)
    state = read_state_dict(file, trust_pickle=trust_pickle, role=role)
    expected = model.state_dict()
    state = _strip_prefix(state, expected)
    _check_keys(state, expected, file, role)
    for key, value in expected.items():  # fill tolerated gaps so strict loading succeeds
        if key not in state:
            state[key] = value
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise ModelError(f"{role} weights file {file} cannot be loaded into the model: "
                         f"{_short(exc)}") from exc
    logger.info("loaded %d tensors from %s into the %s", len(state), file, role)


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
                         f"{_short(exc)}") from exc
    finally:
        set_mode(model, training=was_training)
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"{role} model returns a {type(out).__name__} for input shape {shape}; "
                         "expected a logits tensor")
    if num_classes is not None and tuple(out.shape) != (2, num_classes):
        raise ModelError(f"{role} model output shape {tuple(out.shape)} for input shape {shape} "
                         f"does not match the expected (2, {num_classes}) (batch, num_classes)")
