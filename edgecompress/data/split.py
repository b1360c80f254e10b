"""Seeded stratified splitting and per-channel normalisation.

Everything here is plain numpy so that splitting needs no optional dependency and is bit-for-bit
reproducible from the seed alone: the same labels and seed always give the same index sets, in the
same order, on every machine.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgecompress.errors import DataError

logger = logging.getLogger(__name__)

RandomSource = int | np.random.Generator


@dataclass
class Split:
    """One split of a dataset, ready to feed a model.

    Attributes:
        x: float32 images, shape (N, C, H, W), already normalised: an array, or an
            :class:`~edgecompress.data.stream.ImageStream` that decodes rows on demand (large
            image folders; same shape, ``len`` and indexing).
        y: int64 class indices, shape (N,), values in [0, num_classes).
    """

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if isinstance(self.x, np.ndarray) or not hasattr(self.x, "batches"):
            self.x = np.ascontiguousarray(self.x, dtype=np.float32)
        self.y = np.ascontiguousarray(self.y, dtype=np.int64)
        if self.x.ndim != 4:
            raise DataError(f"Split.x must have shape (N, C, H, W), got shape {self.x.shape}")
        if self.y.shape != (self.x.shape[0],):
            raise DataError(
                f"Split.y must have shape ({self.x.shape[0]},) to match x {self.x.shape}, "
                f"got shape {self.y.shape}"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])


def _allocate(counts: np.ndarray, total: int, capacity: np.ndarray) -> np.ndarray:
    """Share ``total`` among classes in proportion to ``counts`` (largest remainder method).

    No class gets more than its ``capacity``; leftover units go to the classes with the largest
    fractional quota first (ties broken by class order, so the result is deterministic).
    """
    alloc = np.zeros_like(counts)
    n = int(counts.sum())
    if n == 0 or total <= 0:
        return alloc
    quota = counts * (total / n)
    alloc = np.minimum(np.floor(quota).astype(np.int64), capacity)
    remaining = total - int(alloc.sum())
    order = np.argsort(-(quota - np.floor(quota)), kind="stable")
    while remaining > 0:
        progressed = False
        for k in order:
            if remaining == 0:
                break
            if alloc[k] < capacity[k]:
                alloc[k] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            break
    return alloc


def stratified_partition(
    y: np.ndarray, sizes: Sequence[int], rng: RandomSource = 0
) -> list[np.ndarray]:
    """Partition sample indices into parts of the given sizes, preserving class proportions.

    Used for train/val/test splits, for ``limit`` subsampling and for calibration sampling, so all
    three keep the label distribution of their source instead of over-representing early classes.

    Args:
        y: Integer labels, shape (N,).
        sizes: Requested size of each part; their sum must not exceed N.
        rng: Seed or numpy Generator; the same seed and labels give the same parts.

    Returns:
        ``len(sizes) + 1`` index arrays (int64): the requested parts, then the remainder. Each
        array is shuffled (not grouped by class).
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"labels must have shape (N,), got shape {y.shape}")
    n = y.shape[0]
    if any(s < 0 for s in sizes) or sum(sizes) > n:
        raise DataError(f"cannot take parts of sizes {list(sizes)} from {n} samples")
    gen = np.random.default_rng(rng)
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    counts = counts.astype(np.int64)
    left = counts.copy()
    allocs = []
    for size in sizes:
        part = _allocate(counts, int(size), left)
        left -= part
        allocs.append(part)
    allocs.append(left)
    parts: list[list[np.ndarray]] = [[] for _ in allocs]
    for k in range(counts.shape[0]):
        idx = gen.permutation(np.flatnonzero(inverse == k))
        start = 0
        for p, alloc in enumerate(allocs):
            parts[p].append(idx[start:start + alloc[k]])
            start += int(alloc[k])
    return [
        gen.permutation(np.concatenate(p).astype(np.int64)) if p else np.zeros(0, np.int64)
        for p in parts
    ]


def fraction_count(n: int, fraction: float) -> int:
    """Round ``n * fraction`` half-up (Python's ``round`` rounds half to even)."""
    return int(np.floor(n * fraction + 0.5))


def stratified_split(
    y: np.ndarray, val_fraction: float, test_fraction: float, rng: RandomSource = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split indices into train/val/test with per-class proportions preserved.

    Args:
        y: Integer labels, shape (N,).
        val_fraction: Fraction of N that goes to validation.
        test_fraction: Fraction of N that goes to test (0 to split train/val only).
        rng: Seed or numpy Generator.

    Returns:
        ``(train_idx, val_idx, test_idx)`` index arrays.
    """
    n = int(np.asarray(y).shape[0])
    test, val, train = stratified_partition(
        y, [fraction_count(n, test_fraction), fraction_count(n, val_fraction)], rng
    )
    return train, val, test


def stratified_subsample(y: np.ndarray, num: int, rng: RandomSource = 0) -> np.ndarray:
    """Return the indices of a stratified random subset of ``min(num, N)`` samples."""
    n = int(np.asarray(y).shape[0])
    return stratified_partition(y, [min(num, n)], rng)[0]


def compute_normalization(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of ``x`` (N, C, H, W), accumulated in float64.

    Computed on the train split only so that val/test statistics never leak into training.
    A constant channel (std 0) gets std 1.0 so normalising it cannot divide by zero.
    """
    if x.ndim != 4 or x.shape[0] == 0:
        raise DataError(f"cannot compute normalisation statistics of an array of shape {x.shape}")
    mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
    std = x.std(axis=(0, 2, 3), dtype=np.float64)
    flat = std < 1e-12
    if flat.any():
        logger.warning("channel(s) %s are constant in the train split; using std 1.0",
                       np.flatnonzero(flat).tolist())
        std = np.where(flat, 1.0, std)
    return [float(v) for v in mean], [float(v) for v in std]


def normalize(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Return ``(x - mean) / std`` per channel as a new float32 (N, C, H, W) array."""
    if x.ndim != 4 or x.shape[1] != len(mean) or len(mean) != len(std):
        raise DataError(
            f"cannot normalise an array of shape {x.shape} with {len(mean)} means and "
            f"{len(std)} stds"
        )
    out = np.array(x, dtype=np.float32, copy=True)
    out -= np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    out /= np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return out
