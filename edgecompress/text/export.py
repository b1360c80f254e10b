"""ONNX export of sequence classifiers with dynamic batch and sequence length, its parity check,
and the ONNX Runtime transformer optimizer for the FP32 engines.

The model is wrapped so the graph has exactly two int64 inputs (``input_ids``,
``attention_mask``) and one output (``logits``).

Two exporters (``export.exporter``):

- ``torchscript`` (default for the FP32 models): ``torch.onnx.export(dynamo=False)``, the graph
  shape that ``onnxruntime.transformers.optimizer`` was written against, so its Attention,
  EmbedLayerNormalization, SkipLayerNormalization and BiasGelu fusions match (on the dynamo
  graph of the same model the Attention fusion matches nothing: the mask and reshape paths are
  built from Shape/Concat arithmetic it does not recognise). Parity with PyTorch is checked on a
  padded batch like every export.
- ``dynamo``: ``torch.onnx.export(dynamo=True)``; needed for the converted QAT graphs (the
  TorchScript exporter rejects the ``quantized_decomposed`` ops).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecompress.errors import BackendUnavailable, ParityError
from edgecompress.io import atomic_path

logger = logging.getLogger(__name__)

INPUTS = ("input_ids", "attention_mask")


class LogitsOnly(nn.Module):
    """``(input_ids, attention_mask) -> logits`` around a Hugging Face classifier."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def _onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailable("ONNX export needs onnx, onnxscript and onnxruntime: "
                                 "pip install 'edgecompress[onnx]'") from exc


def dynamic_shapes(max_seq: int) -> dict[str, dict[int, Any]]:
    """Batch and sequence length free (sequence up to the position table's size)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("seq", min=2, max=max_seq)
    return {name: {0: batch, 1: seq} for name in INPUTS}


def export_onnx(model: nn.Module, example: tuple[torch.Tensor, torch.Tensor], out: Path,
                opset: int = 18, *, max_seq: int, wrap: bool = True,
                exporter: str = "dynamo") -> Path:
    """Write ``model`` to ``out`` (atomically, weights inside the file).

    ``wrap=False`` exports a module that already takes ``(input_ids, attention_mask)`` and
    returns logits (a converted QAT graph). ``exporter="torchscript"`` uses the TorchScript
    exporter (dynamic batch and sequence axes), whose graph ORT's transformer optimizer fuses.
    """
    _onnx()
    module = LogitsOnly(model).eval() if wrap else model
    with atomic_path(out) as tmp:
        if exporter == "torchscript":
            axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS}
            axes["logits"] = {0: "batch"}
            with warnings.catch_warnings():  # the exporter's deprecation notice, every call
                warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
                torch.onnx.export(module, example, str(tmp), input_names=list(INPUTS),
                                  output_names=["logits"], dynamo=False, opset_version=opset,
                                  dynamic_axes=axes, do_constant_folding=True)
        elif exporter == "dynamo":
            torch.onnx.export(module, example, str(tmp), input_names=list(INPUTS),
                              output_names=["logits"], dynamo=True, opset_version=opset,
                              dynamic_shapes=dynamic_shapes(max_seq), external_data=False,
                              verbose=False)
        else:
            raise ValueError(f"unknown exporter {exporter!r} (torchscript, dynamo)")
        _strip_file(tmp)
    return out


def _strip_file(path: Path) -> None:
    """Drop the exporter's stack traces (local source paths) and doc strings from the file."""
    import onnx

    from edgecompress.export.onnx import strip_build_details

    proto = onnx.load(str(path))
    strip_build_details(proto)
    onnx.save(proto, str(path))


def ort_session(path: Path, threads: int = 1, *, optimized_path: Path | None = None,
                disabled: list[str] | None = None):
    """A CPU session with the project's settings (sequential, level ALL)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    kwargs = {"disabled_optimizers": disabled} if disabled else {}
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"], **kwargs)


def ort_logits(session: Any, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Run one padded batch."""
    return session.run(None, {"input_ids": ids.astype(np.int64),
                              "attention_mask": mask.astype(np.int64)})[0]


def check_parity(path: Path, reference: np.ndarray, ids: np.ndarray, mask: np.ndarray,
                 atol: float, label: str) -> dict[str, float]:
    """Compare the ONNX model's logits with PyTorch's on the same padded batch.

    Raises:
        ParityError: max abs diff above ``atol`` (names the file, the diff and the limit).
    """
    got = ort_logits(ort_session(path), ids, mask)
    diff = float(np.abs(got - reference).max())
    agree = float((got.argmax(1) == reference.argmax(1)).mean())
    if diff > atol:
        raise ParityError(f"{path}: {label} ONNX logits differ from PyTorch by {diff:.3g} > "
                          f"export.atol {atol:g} (top-1 agreement {agree:.4f})")
    return {"max_abs_diff": diff, "top1_agreement": agree}


@contextlib.contextmanager
def quiet_onnxruntime_tools() -> Iterator[None]:
    """ONNX Runtime's optimizer and quantizer log every fused node and tensor at INFO on the
    root logger (over a hundred lines per model): raise the root level while they run."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def optimize_transformer(src: Path, out: Path) -> dict[str, int]:
    """``onnxruntime.transformers.optimizer`` (BERT fusions: Attention, EmbedLayerNormalization,
    SkipLayerNormalization, BiasGelu) written to ``out``; returns the fused-operator statistics.

    Head counts are read from the graph (``num_heads=0``), which also holds for pruned heads.
    """
    from onnxruntime.transformers import optimizer

    with warnings.catch_warnings(), quiet_onnxruntime_tools():
        warnings.simplefilter("ignore")
        opt = optimizer.optimize_model(str(src), model_type="bert", num_heads=0, hidden_size=0,
                                       opt_level=1, use_gpu=False)
    stats = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
    with atomic_path(out) as tmp:
        opt.save_model_to_file(str(tmp))
    logger.info("optimized %s: %s", src.name, stats)
    return stats
