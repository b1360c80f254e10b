"""Calibration observers for PTQ: min-max, percentile and entropy (KL divergence).

``minmax`` uses torchao's ``MinMaxObserver``. ``percentile`` and ``entropy`` need the value
distribution, so :class:`DistributionObserver` keeps the exact min/max plus a bounded uniform
reservoir sample of the values it saw (memory stays fixed however large the calibration set is)
and picks the range when ``calculate_qparams`` is called:

- percentile: clip at the ``percentile``-th percentile of |x| (or of x at both ends for an
  asymmetric range), the classic way to ignore a handful of outliers;
- entropy: TensorRT's calibrator idea: choose the clipping threshold whose 256-bin quantized
  histogram has the smallest KL divergence from the 2048-bin reference histogram.
"""

from __future__ import annotations

import numpy as np
import torch

PTQ_METHODS = ("minmax", "percentile", "entropy")


def _reservoir(previous: torch.Tensor, new: torch.Tensor, seen: int, size: int,
               generator: torch.Generator) -> torch.Tensor:
    """Algorithm R on flattened tensors: a uniform sample of everything seen so far."""
    new = new.detach().flatten().float().cpu()
    room = size - previous.numel()
    if room > 0:
        take = new[:room]
        previous = torch.cat([previous, take])
        new, seen = new[room:], seen + take.numel()
    if new.numel() == 0:
        return previous
    # Each later value replaces a random slot with probability size / (index + 1).
    idx = torch.arange(seen + 1, seen + 1 + new.numel(), dtype=torch.float64)
    keep = torch.rand(new.numel(), generator=generator, dtype=torch.float64) < size / idx
    slots = torch.randint(0, size, (int(keep.sum()),), generator=generator)
    previous = previous.clone()
    previous[slots] = new[keep]
    return previous


def entropy_threshold(values: np.ndarray, bins: int = 2048, quant_bins: int | None = None) -> float:
    """Clipping threshold of |values| minimising KL(P || Q) (TensorRT's entropy calibration).

    ``quant_bins`` is the number of quantization levels between 0 and the threshold: 256 for a
    one-sided (post-ReLU) tensor in uint8, 128 for a signed one. Exact zeros are left out of the
    histogram (as NVIDIA's pytorch-quantization ``skip_zeros``): after a ReLU they are half the
    values, are represented exactly at any threshold, and would otherwise pull it far too low.
    """
    if quant_bins is None:
        quant_bins = 256 if float(np.min(values)) >= 0 else 128
    mags = np.abs(values.astype(np.float64))
    mags = mags[mags > 0]
    top = float(mags.max()) if mags.size else 0.0
    if top == 0.0:
        return 0.0
    hist, edges = np.histogram(mags, bins=bins, range=(0.0, top))
    best_kl, best_i = np.inf, bins
    for i in range(quant_bins, bins + 1, 16):
        p = hist[:i].astype(np.float64).copy()
        p[i - 1] += hist[i:].sum()  # clipped mass goes to the last bin
        if p.sum() == 0:
            continue
        # Quantize the first i bins into quant_bins levels, spreading each level evenly over
        # the non-empty reference bins it covers.
        q = np.zeros(i, dtype=np.float64)
        chunks = np.array_split(np.arange(i), quant_bins)
        for chunk in chunks:
            nz = chunk[hist[chunk] > 0]
            if nz.size:
                q[nz] = hist[chunk].sum() / nz.size
        pn, qn = p / p.sum(), q / max(q.sum(), 1e-12)
        mask = pn > 0
        kl = float(np.sum(pn[mask] * np.log(pn[mask] / np.maximum(qn[mask], 1e-12))))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return float(edges[best_i])


def make_distribution_observer(base: type) -> type:
    """Subclass torchao's ``MinMaxObserver`` so qparams come from a percentile/entropy range.

    Built lazily (torchao is an optional dependency).
    """

    class DistributionObserver(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args, method: str = "percentile", percentile: float = 99.99,
                     reservoir: int = 1 << 18, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            if method not in ("percentile", "entropy"):
                raise ValueError(f"unknown calibration method {method!r}")
            self.method, self.percentile, self.size = method, percentile, reservoir
            self.sample = torch.empty(0)
            self.seen = 0
            self.gen = torch.Generator().manual_seed(0)

        def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
            if x_orig.numel() == 0:
                return x_orig
            super().forward(x_orig)  # exact min/max, kept for the asymmetric lower end
            self.sample = _reservoir(self.sample, x_orig, self.seen, self.size, self.gen)
            self.seen += x_orig.numel()
            return x_orig

        @torch.jit.export
        def calculate_qparams(self):  # noqa: ANN201 - same signature as the base class
            if self.sample.numel() == 0:
                return super().calculate_qparams()
            values = self.sample.numpy()
            lo, hi = float(self.min_val), float(self.max_val)
            if self.method == "percentile":
                if lo >= 0:  # post-ReLU: only the top end has outliers
                    hi = float(np.percentile(values, self.percentile))
                else:
                    hi = float(np.percentile(values, self.percentile))
                    lo = float(np.percentile(values, 100.0 - self.percentile))
            else:
                t = entropy_threshold(values)
                hi, lo = min(hi, t), max(lo, -t)
            return self._calculate_qparams(torch.tensor([lo]).reshape(()),
                                           torch.tensor([hi]).reshape(()))

    return DistributionObserver
