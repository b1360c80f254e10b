"""Parity of an engine's logits against the PyTorch model it came from, including SNR in dB.

Top-1 agreement says whether decisions changed; max abs diff catches a single broken output;
SNR (signal power over error power) summarises how much numerical noise an engine adds, which is
the number that moves when int8 or fp16 engines arrive (fp32 engines sit around 100+ dB).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgecompress.errors import ParityError

#: Reported instead of +inf when the engine's logits are bit-identical to the reference (JSON has
#: no infinity, and a finite cap keeps comparisons and plots simple).
SNR_CAP_DB = 200.0


def snr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """``10 * log10(sum(ref^2) / sum((ref - cand)^2))``, capped at :data:`SNR_CAP_DB`.

    Raises:
        ParityError: shapes differ or there is nothing to compare.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape or ref.size == 0:
        raise ParityError(f"cannot compare logits of shapes {ref.shape} and {cand.shape}")
    noise = float(np.sum((ref - cand) ** 2))
    signal = float(np.sum(ref ** 2))
    if not math.isfinite(noise):
        return -SNR_CAP_DB  # NaN/inf in the engine output: as bad as it gets
    if noise == 0.0:
        return SNR_CAP_DB
    if signal == 0.0:
        return -SNR_CAP_DB
    return float(min(SNR_CAP_DB, 10.0 * math.log10(signal / noise)))


def parity_summary(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """The report's ``parity`` entry: top-1 agreement, max/mean abs diff and SNR (dB)."""
    from edgecompress.export import compare_logits

    result = compare_logits(reference, candidate)
    return {"top1_agreement": result.top1_agreement, "max_abs_diff": result.max_abs_diff,
            "mean_abs_diff": result.mean_abs_diff, "snr_db": round(snr_db(reference, candidate), 3),
            "samples": result.samples}
