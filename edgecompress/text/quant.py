"""INT8 for ONNX Runtime: post-training quantization of the Linear/MatMul layers, and the check
that ONNX Runtime really runs int8 kernels.

Scheme (DESIGN.md, "Facts"): int8 symmetric per-channel weights, uint8 (asymmetric)
activations on the weight MatMul/Gemm (and ORT's fused Attention, whose Q/K/V projection is one
weight matmul). The attention mask and token ids are never quantized; LayerNorm, softmax and
GELU stay in float.

- ``ptq_dynamic``: weights quantized offline, activations per call (``DynamicQuantizeMatMul`` /
  ``MatMulIntegerToFloat`` / ``QAttention`` kernels): no calibration, the usual choice for BERT
  on CPUs. With ``embeddings=True`` the embedding tables are stored int8 too
  (``QEmbedLayerNormalization`` on the fused embeddings, or an int8 table feeding ``Gather``
  then ``DequantizeLinear``): the word-embedding table is most of a small student's file.
- ``ptq_static``: QDQ with activation ranges calibrated on training texts (``QLinearMatMul`` /
  ``QGemm`` / ``MatMulIntegerToFloat`` once ORT fuses the Q/DQ pairs).

What counts is what ORT runs: the session's optimized graph (``optimized_model_filepath``) is
read back and its int8 kernels counted; weight MatMuls left in float are listed as
``fp32_nodes`` so the gate's ``no_fp32_fallback`` can fail a silent FP32 fallback.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.io import atomic_path

logger = logging.getLogger(__name__)

#: What ``quantize_dynamic_int8`` quantizes.
DYNAMIC_OPS = ["MatMul", "Gemm", "Attention"]
DYNAMIC_EMBEDDING_OPS = ["Gather", "EmbedLayerNormalization"]
#: Disabled when counting/serving static QDQ graphs: fusing a float MatMul+Add into Gemm would
#: hide a Linear whose output has no Q node from the int8 fusions.
QDQ_DISABLED = ["MatMulAddFusion"]


def quantize_dynamic_int8(src: Path, out: Path, *, per_channel: bool = True,
                          embeddings: bool = True) -> Path:
    """Dynamic INT8 of every weight MatMul (and fused Attention) of ``src`` into ``out``; with
    ``embeddings`` the embedding tables too (int8 storage, dequantized after the lookup)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ops = DYNAMIC_OPS + (DYNAMIC_EMBEDDING_OPS if embeddings else [])
    from edgecompress.text.export import quiet_onnxruntime_tools

    with atomic_path(out) as tmp, quiet_onnxruntime_tools():
        # ORT's contrib ops (Attention, SkipLayerNormalization, ...) defeat ONNX shape
        # inference; their outputs are float.
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8,
                         per_channel=per_channel, op_types_to_quantize=ops,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return out


class _Reader:
    """CalibrationDataReader over padded ``(input_ids, attention_mask)`` batches."""

    def __init__(self, feeds: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        self._it = iter([{"input_ids": i.astype(np.int64), "attention_mask": m.astype(np.int64)}
                         for i, m in feeds])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - ORT calls it only for some methods
        pass


def quantize_static_int8(src: Path, out: Path, feeds: list[tuple[np.ndarray, np.ndarray]], *,
                         per_channel: bool = True, for_tensorrt: bool = False) -> Path:
    """Static QDQ INT8 (uint8 activations, int8 per-channel weights) of the weight MatMuls.

    ``for_tensorrt``: int8 *symmetric* activations (zero point 0) and float biases, the Q/DQ
    form TensorRT builds INT8 layers from; ORT's uint8 activations suit its CPU kernels."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from edgecompress.text.export import quiet_onnxruntime_tools

    with atomic_path(out) as tmp, quiet_onnxruntime_tools():
        quantize_static(str(src), str(tmp), _Reader(feeds), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8 if for_tensorrt else QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        per_channel=per_channel, op_types_to_quantize=["MatMul", "Gemm"],
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT,
                                       "ActivationSymmetric": for_tensorrt,
                                       # TensorRT rejects int32 (quantized) biases
                                       "QuantizeBias": not for_tensorrt,
                                       "WeightSymmetric": True,
                                       "MatMulConstBOnly": True})
    return out


def kernel_report(path: Path, *, disabled: list[str] | None = None) -> dict[str, Any]:
    """What ORT runs for ``path``: the one INT8 kernel census
    (:func:`edgecompress.quant.onnx_passes.kernel_census`) of the graph ONNX Runtime optimizes
    it to (with ``disabled`` optimizers off, as the engine is served)."""
    import onnx

    from edgecompress.quant.onnx_passes import kernel_census
    from edgecompress.text.export import ort_session

    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        ort_session(path, 1, optimized_path=optimized, disabled=disabled)
        return kernel_census(onnx.load(str(optimized)))
