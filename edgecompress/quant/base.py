"""The contract every quantization preset follows, so the qat stage treats them alike.

A *preset* is what a target family needs from INT8: which quantizer annotates the graph, how the
prepared (fake-quant) model is converted, and how the converted model is written as the file its
backend consumes (QDQ ONNX for ONNX Runtime/TensorRT, a ``.tflite`` flatbuffer for LiteRT).
The qat stage calls, per preset::

    prepared = preset.prepare(model, example, qat=True, skip=names)  # fake-quant GraphModule
    ... train (QAT) or run calibration batches through it (PTQ) ...
    converted = preset.convert(prepared)
    preset.export(converted, example, out_path)                        # the engine's source file
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

PRESETS: dict[str, type[QuantPreset]] = {}
"""Registered preset classes by name; filled by :func:`register_preset`."""


class QuantPreset(ABC):
    """One INT8 scheme for one family of runtimes.

    Class attributes:
        name: Preset name used in recipes (``ort-x86``, ``tensorrt``, ``tflite``).
        backends: Backend names that can run what :meth:`export` writes.
        artifact_suffix: Suffix of the exported file (``.onnx`` or ``.tflite``).
        extra: pip extra that provides the preset's dependencies.
        rationale: One paragraph on why this scheme suits the hardware (shown in docs/CLI).
    """

    name: ClassVar[str]
    backends: ClassVar[tuple[str, ...]]
    artifact_suffix: ClassVar[str]
    extra: ClassVar[str]
    rationale: ClassVar[str]

    def availability(self) -> tuple[bool, str]:
        """``(True, "")`` if the preset's dependencies import here, else ``(False, reason)``."""
        return True, ""

    @abstractmethod
    def prepare(self, model: nn.Module, example: torch.Tensor, *, qat: bool,
                skip: Collection[str] = ()) -> nn.Module:
        """Export ``model`` (eval-mode float) and insert fake-quant (``qat``) or observers (PTQ).

        Args:
            model: The float student.
            example: One input batch (``(N, C, H, W)`` float32) used to trace the model.
            qat: True for quantization-aware training (fake quant), False for calibration.
            skip: Dotted module names (as in ``model.named_modules()``) of conv/linear layers
                to leave in float (accuracy-aware fallback).

        Returns:
            The prepared ``torch.fx.GraphModule``; call ``move_exported_model_to_train`` /
            ``_eval`` on it, never ``.train()``/``.eval()``.
        """

    @abstractmethod
    def convert(self, prepared: nn.Module) -> nn.Module:
        """Turn the prepared model into the quantized (Q/DQ) model."""

    @abstractmethod
    def export(self, converted: nn.Module, example: torch.Tensor, out_path: Path) -> Path:
        """Write ``converted`` to ``out_path`` (atomically) in the backend's source format."""


def register_preset(cls: type[QuantPreset]) -> type[QuantPreset]:
    """Class decorator adding a preset to :data:`PRESETS` under ``cls.name``."""
    PRESETS[cls.name] = cls
    return cls
