"""Model ids: ``torchvision:<name>``, ``timm:<name>`` and ``hf:<local dir>`` as teacher or student.

An id is resolved twice: cheaply at ``validate``/preflight time (:func:`check_model_id`: the
package imports, the name exists, the directory is an image-classification checkpoint), so a
missing package stops the run before any data is read or any model trains (exit 3 with the
install line), and for real when a stage builds the model (:func:`build_zoo_model`). Nothing is
ever downloaded: torchvision and timm models are built with random weights (``weights=None`` /
``pretrained=False``) and take pretrained weights only from a local file (the recipe's
``weights``); Hugging Face directories load with ``local_files_only=True``.

torchvision 0.28.0 (torch 2.13's pair) is a CUDA wheel whose C++ ops do not load next to the
CPU torch wheel; :mod:`edgecompress._torchvision_fix` (installed by ``import edgecompress``) makes
its import succeed without them. The alternative, torch 2.14.1 with torchvision 0.29.1 (both CUDA
builds), costs 5.5 GB in the venv instead of 39 MB (README "Model zoo").
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecompress.errors import BackendUnavailable, ConfigError, ModelError

logger = logging.getLogger(__name__)

SOURCES = ("torchvision", "timm", "hf")
INSTALL = {
    "torchvision": "pip install 'edgecompress[zoo]'  (torchvision==0.28.0 for torch 2.13.0)",
    "timm": "pip install 'edgecompress[zoo]'  (timm==1.0.29, torchvision==0.28.0)",
    "hf": "pip install 'edgecompress[text]'  (transformers)",
}


@dataclass(frozen=True)
class ModelId:
    """A parsed model id: where the architecture comes from and its name (or directory)."""

    source: str
    name: str

    def __str__(self) -> str:
        return f"{self.source}:{self.name}"


def parse_model_id(text: str) -> ModelId:
    """Split ``source:name``; the source must be one of :data:`SOURCES`.

    Raises:
        ConfigError: If the id is malformed or names an unknown source.
    """
    source, sep, name = str(text).partition(":")
    if not sep or not name.strip():
        raise ConfigError(f"model id {text!r} must look like 'torchvision:resnet18', "
                          "'timm:deit_tiny_patch16_224' or 'hf:path/to/local/dir'")
    if source not in SOURCES:
        raise ConfigError(f"model id {text!r}: unknown source {source!r}; known sources: "
                          f"{', '.join(SOURCES)}")
    return ModelId(source, name.strip())


def import_torchvision() -> Any:
    """``import torchvision`` with the CPU-wheel import fix in place (see module docstring)."""
    from edgecompress import _torchvision_fix

    _torchvision_fix.install()
    return importlib.import_module("torchvision")


def _import_source(source: str) -> Any:
    """Import the package behind ``source``; a missing or broken one is exit 3 with the fix."""
    module = {"torchvision": "torchvision", "timm": "timm", "hf": "transformers"}[source]
    if importlib.util.find_spec(module) is None:
        raise BackendUnavailable(f"model ids '{source}:...' need the '{module}' package, which "
                                 f"is not installed: {INSTALL[source]}")
    try:
        if source in ("torchvision", "timm"):
            import_torchvision()
        return importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - a broken install, reported with its cause
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise BackendUnavailable(f"model ids '{source}:...' need '{module}', which is installed "
                                 f"but does not import ({type(exc).__name__}: {first}); "
                                 f"reinstall it: {INSTALL[source]}") from exc


def _unknown(model_id: ModelId, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(model_id.name, known, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"model id '{model_id}': {model_id.source} has no model "
                       f"{model_id.name!r}{hint}")


def _hf_config(directory: Path, model_id: ModelId) -> dict:
    config = directory / "config.json"
    if not directory.is_dir() or not config.is_file():
        raise ModelError(f"model id '{model_id}': {directory} is not a Hugging Face model "
                         "directory (no config.json); save one with model.save_pretrained(dir)")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"model id '{model_id}': {config} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"model id '{model_id}': {config} holds no JSON object")
    return data


def check_model_id(text: str) -> ModelId:
    """Resolve an id without building the model: package, name, local directory.

    Raises:
        ConfigError: Malformed id, unknown source or unknown model name (with close matches).
        BackendUnavailable: The package is missing or broken (exit 3, with the install line).
        ModelError: A ``hf:`` directory is missing or is not a model directory.
    """
    model_id = parse_model_id(text)
    package = _import_source(model_id.source)
    if model_id.source == "torchvision":
        known = package.models.list_models()
        if model_id.name not in known:
            raise _unknown(model_id, known)
    elif model_id.source == "timm":
        if not package.is_model(model_id.name):
            raise _unknown(model_id, package.list_models())
    else:
        _hf_config(Path(model_id.name), model_id)
    return model_id


class HFImageClassifier(nn.Module):
    """A Hugging Face ``*ForImageClassification`` model that returns the logits tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def build_zoo_model(text: str, *, num_classes: int, kwargs: dict | None = None,
                    role: str = "teacher") -> nn.Module:
    """Build the model an id names, with ``num_classes`` outputs and no download.

    Args:
        text: The id (``torchvision:resnet18``, ``timm:resnet18``, ``hf:dir``).
        num_classes: Classifier outputs to build with (the weights' class count when the
            recipe gives local weights; the caller swaps the head for the data's afterwards).
        kwargs: Extra keyword arguments for the architecture (e.g. ``image_size: 32`` for
            torchvision's ViT, ``drop_rate`` for timm).
        role: ``"teacher"`` or ``"student"``, for messages.

    Raises:
        ConfigError / BackendUnavailable / ModelError: See :func:`check_model_id`; ModelError
            also when the architecture rejects the arguments.
    """
    model_id = check_model_id(text)
    extra = dict(kwargs or {})
    try:
        if model_id.source == "torchvision":
            torchvision = import_torchvision()
            return torchvision.models.get_model(model_id.name, weights=None,
                                                num_classes=num_classes, **extra)
        if model_id.source == "timm":
            import timm

            return timm.create_model(model_id.name, pretrained=False, num_classes=num_classes,
                                     **extra)
        from transformers import AutoModelForImageClassification

        hf = AutoModelForImageClassification.from_pretrained(
            model_id.name, local_files_only=True, num_labels=num_classes,
            ignore_mismatched_sizes=True, **extra)
        return HFImageClassifier(hf)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the library's own message, shortened
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise ModelError(f"{role} '{model_id}' cannot be built with num_classes={num_classes}"
                         f" and kwargs {sorted(extra)}: {type(exc).__name__}: {first}") from exc
