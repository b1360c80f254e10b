"""Per-layer INT8 sensitivity and the accuracy-aware FP32 fallback built on it.

Sensitivity of a layer = what quantizing *that layer alone* costs (everything else FP32), measured
with PTQ on the calibration set: the validation accuracy drop in percentage points and the mean
squared logit error against the FP32 model (the tie-breaker: on a few hundred validation images
many layers cost 0 pp). The accuracy criterion (Intel Neural Compressor's name for it) then keeps
the most sensitive layers in FP32, one at a time, until the quantized model is close enough.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecompress.quant.base import QuantPreset

logger = logging.getLogger(__name__)


def quantizable_layers(preset: QuantPreset, model: nn.Module, example: torch.Tensor) -> list[str]:
    """Dotted names of the conv/linear layers ``preset`` quantizes in ``model``."""
    preset.prepare(model, example, qat=False)
    return list(getattr(preset, "layers", {}).get("quantized", []))


def layer_sensitivity(preset: QuantPreset, model: nn.Module, *, example: torch.Tensor,
                      calibration: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                      layers: list[str] | None = None) -> list[dict[str, Any]]:
    """Quantize one layer at a time; return entries sorted most sensitive first.

    Each entry: ``{"layer", "accuracy", "accuracy_drop_pp", "logit_mse"}`` (drop vs the FP32
    model on the validation split).
    """
    from edgecompress.quant.training import calibrate, predict
    from edgecompress.training import predict_logits

    cpu = torch.device("cpu")
    model = model.cpu().eval()
    fp32_logits = predict_logits(model, x_val, cpu)
    fp32_acc = float((fp32_logits.argmax(1) == y_val).mean())
    layers = layers if layers is not None else quantizable_layers(preset, model, example)
    entries = []
    for name in layers:
        prepared = preset.prepare(model, example, qat=False,
                                  skip=[other for other in layers if other != name])
        calibrate(prepared, calibration)
        logits = predict(preset.convert(prepared), x_val)
        acc = float((logits.argmax(1) == y_val).mean())
        entries.append({"layer": name, "accuracy": acc,
                        "accuracy_drop_pp": round(100.0 * (fp32_acc - acc), 4),
                        "logit_mse": float(np.mean((logits - fp32_logits) ** 2))})
        logger.info("sensitivity %s: drop %.2f pp, logit MSE %.3g", name,
                    entries[-1]["accuracy_drop_pp"], entries[-1]["logit_mse"])
    model.eval()
    return sorted(entries, key=lambda e: (-e["accuracy_drop_pp"], -e["logit_mse"]))
