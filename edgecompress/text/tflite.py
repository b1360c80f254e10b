"""TFLite / LiteRT engines of text classifiers (FP32): converted by litert-torch at the
target's static ``(1, seq_len)`` shape, run by the shared ``tflite`` backend (XNNPACK).

A flatbuffer has static shapes, so each sequence length a TFLite target asks for gets its own
file (``export/<role>.s<seq_len>.tflite``), and accuracy is measured on the test texts padded
(or truncated) to that length. litert-torch turns the int64 token inputs into int32; the
backend's runner casts the feed. INT8 is refused at validate time
(:data:`edgecompress.text.recipe.TFLITE_INT8_REFUSAL`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecompress.errors import ParityError

logger = logging.getLogger(__name__)


def tflite_path(directory: Path, role: str, seq_len: int) -> Path:
    """Where the export stage writes ``role``'s flatbuffer for ``seq_len``."""
    return Path(directory) / f"{role}.s{seq_len}.tflite"


def padded_feed(ids: list[list[int]], pad_id: int, seq_len: int) -> dict[str, np.ndarray]:
    """Token ids padded (or truncated) to exactly ``seq_len``, with their attention mask."""
    from edgecompress.text.data import collate

    input_ids, mask = collate(ids, pad_id, length=seq_len)
    return {"input_ids": input_ids.numpy(), "attention_mask": mask.numpy()}


def export_text_tflite(model: nn.Module, seq_len: int, path: Path) -> Path:
    """Convert a Hugging Face sequence classifier to an FP32 ``.tflite`` at ``(1, seq_len)``.

    Raises:
        BackendUnavailable: litert-torch is not installed.
        ModelError: The converter rejects the model (its first line).
    """
    from edgecompress.export.tflite import convert_module
    from edgecompress.text.export import LogitsOnly

    ids = torch.zeros((1, seq_len), dtype=torch.long)
    return convert_module(LogitsOnly(model).eval(), (ids, torch.ones_like(ids)), path)


def check_tflite_parity(path: Path, model: nn.Module, feed: dict[str, np.ndarray],
                        atol: float, role: str) -> dict[str, Any]:
    """The flatbuffer against PyTorch on the same padded texts; raises on a mismatch."""
    from edgecompress.backends import get_backend
    from edgecompress.text.export import LogitsOnly

    with torch.no_grad():
        ref = LogitsOnly(model).eval()(*(torch.as_tensor(feed[k])
                                         for k in ("input_ids", "attention_mask"))).numpy()
    with get_backend("tflite").load(path) as runner:
        got = runner.run(feed)
    diff = float(np.abs(got - ref).max())
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    if diff > atol:
        raise ParityError(f"{path}: the {role}'s TFLite engine differs from PyTorch (max abs "
                          f"logit diff {diff:.3g} > export.atol {atol:g}, top-1 agreement "
                          f"{agree:.4f} on {len(ref)} test texts)")
    return {"max_abs_diff": diff, "top1_agreement": agree, "samples": len(ref),
            "size_bytes": Path(path).stat().st_size}


def tflite_seq_lens(ctx: Any) -> list[int]:
    """The sequence lengths TFLite targets are converted at (one flatbuffer each)."""
    return sorted({t.seq_len for t in ctx.recipe.targets if t.backend == "tflite"})


def write_tflite_engines(ctx: Any, model: nn.Module, role: str, out_dir: Path,
                         metrics: dict[str, Any], outputs: dict[str, Path]) -> None:
    """FP32 ``.tflite`` files at each TFLite target's sequence length, parity-checked
    (skipped, with the reason logged, when the converter is not installed: the bench stage
    then reports those targets skipped)."""
    lengths = tflite_seq_lens(ctx)
    if not lengths:
        return
    from edgecompress.backends import get_backend

    ok, reason = get_backend("tflite").availability()
    if ok:
        try:
            import litert_torch  # noqa: F401
        except ImportError as exc:
            ok, reason = False, f"litert-torch is not installed ({exc}): pip install " \
                                "'edgecompress[tflite]'"
    if not ok:
        logger.warning("TFLite export skipped: %s", reason)
        metrics["tflite"] = {"skipped": reason}
        return
    data = ctx.encoded("test")
    for seq_len in lengths:
        path = export_text_tflite(model, seq_len, tflite_path(out_dir, role, seq_len))
        feed = padded_feed(data.head(ctx.recipe.export.parity_samples), ctx.pad_id, seq_len)
        check = check_tflite_parity(path, model, feed, ctx.recipe.export.atol, role)
        metrics[role].setdefault("tflite", {})[str(seq_len)] = check
        outputs[f"{role}_tflite_s{seq_len}"] = path
