"""Checkpoints (state dicts) read safely: ``.pt/.pth/.bin/.ckpt`` through ``torch.load`` with
``weights_only=True`` unless the recipe trusts pickles, ``.safetensors`` without pickles at all,
and every mismatch with the model (missing, unexpected or mis-shaped keys) named.

Split from :mod:`edgecompress.models.loading` (which builds models and calls these).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecompress.errors import BackendUnavailable, ModelError

logger = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_MAX_LISTED = 10


def short_error(exc: BaseException, limit: int = 300) -> str:
    """One-line ``Type: message`` summary of an exception, for error messages."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > limit:
        first = first[:limit] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


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
    return short_error(exc)


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
                         f"safetensors file: {short_error(exc)}") from exc


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
                         f"{short_error(exc)}") from exc
    logger.info("loaded %d tensors from %s into the %s", len(state), file, role)
