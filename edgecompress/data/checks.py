"""Data sanity checks run before any training: labels, class counts, limits, pixels.

Each check raises :class:`~edgecompress.errors.DataError` (exit code 2) naming the file and the
offending label, row or class, so a careless dataset fails in seconds with a message the user can
act on, instead of training for an hour on a silently wrong task (a label -1 that became an extra
class, a class with one sample that never reaches the test split, a NaN pixel that poisons the
normalisation statistics).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from edgecompress.errors import DataError

logger = logging.getLogger(__name__)

MIN_CLASSES = 2


def _first_rows(mask: np.ndarray, limit: int = 5) -> str:
    rows = np.flatnonzero(mask)
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    more = f" and {rows.shape[0] - limit} more" if rows.shape[0] > limit else ""
    return f"row{'s' if rows.shape[0] > 1 else ''} {shown}{more}"


def check_finite(x: np.ndarray, where: str) -> None:
    """Refuse NaN/inf pixels, naming the first offending rows (samples) of ``where``."""
    if x.dtype.kind != "f" or x.shape[0] == 0:
        return
    bad = ~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
    if bad.any():
        raise DataError(f"{where}: images contain NaN or infinite values at {_first_rows(bad)} "
                        f"(shape {x.shape})")


def clean_labels(y: np.ndarray, where: str) -> np.ndarray:
    """Return ``y`` as int64 (N,), refusing non-integer and negative labels (naming the rows)."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where}: labels must have shape (N,) of class indices, got shape "
                        f"{y.shape}")
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(np.nan_to_num(y)))
        if bad.any():
            raise DataError(f"{where}: labels must be integers; {_first_rows(bad)} hold "
                            f"{y[np.flatnonzero(bad)[:5]].tolist()}")
        y = y.astype(np.int64)
    if y.dtype.kind not in "biu":
        raise DataError(f"{where}: labels must be integers, got dtype {y.dtype} (shape {y.shape})")
    y = y.astype(np.int64)
    negative = y < 0
    if negative.any():
        raise DataError(f"{where}: label {int(y[negative][0])} at {_first_rows(negative)} is "
                        f"negative; class labels must be >= 0 (drop unlabelled samples first)")
    return y


def encode_labels(
    parts: Sequence[tuple[np.ndarray, str]],
) -> tuple[list[np.ndarray], list[str], dict[str, int] | None]:
    """Check labels and map them onto 0..K-1; the first part (the training pool) defines K.

    Labels already 0..K-1 are unchanged. Others (1..10, {3, 7}, 0..9 with a gap) are mapped in
    sorted order; the mapping is logged and returned so the report can say so. A label that
    appears only in a later part (a given test split) is refused: no model trained on the pool
    could predict it.

    Returns:
        ``(encoded parts, class names (the original label values), mapping or None)``.
    """
    cleaned = [clean_labels(y, where) for y, where in parts]
    classes = np.unique(cleaned[0])
    for y, (_, where) in zip(cleaned[1:], parts[1:], strict=True):
        unknown = ~np.isin(y, classes)
        if unknown.any():
            raise DataError(f"{where}: label {int(y[unknown][0])} at {_first_rows(unknown)} does "
                            f"not occur in the training data {parts[0][1]} (its labels: "
                            f"{classes.tolist()[:20]})")
    check_class_count(len(classes), parts[0][1])
    mapping = None
    if not np.array_equal(classes, np.arange(classes.shape[0])):
        mapping = {str(int(c)): k for k, c in enumerate(classes)}
        shown = dict(list(mapping.items())[:20])
        logger.warning("%s: labels are not 0..%d; mapped %s", parts[0][1], classes.shape[0] - 1,
                       shown)
    encoded = [np.searchsorted(classes, y).astype(np.int64) for y in cleaned]
    return encoded, [str(int(c)) for c in classes], mapping


def check_class_count(num_classes: int, where: str) -> None:
    """A classifier needs at least two classes."""
    if num_classes < MIN_CLASSES:
        raise DataError(f"{where}: found {num_classes} class(es); classification needs at least "
                        f"{MIN_CLASSES}")


def check_limits(limits: Mapping[str, int | None], num_classes: int, where: str) -> None:
    """Refuse a limit that cannot hold one sample of every class (a stratified draw would drop
    classes)."""
    for key, value in limits.items():
        if value is not None and value < num_classes:
            raise DataError(f"{where}: data.{key}={value} is smaller than the number of classes "
                            f"({num_classes}); a stratified subsample would leave classes out")


def check_split_counts(
    splits: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    where: str,
    *,
    required: Sequence[str],
    hint: str,
) -> dict[str, list[int]]:
    """Count samples per class in each split; every class must appear in each ``required`` split.

    Splits not in ``required`` (a given official test split) only get a warning for a missing
    class. Returns the per-class counts per split (for the report).

    Raises:
        DataError: naming the class (its original label), its total count and the empty split.
    """
    k = len(class_names)
    counts = {name: np.bincount(y, minlength=k)[:k] for name, y in splits.items()}
    total = sum(counts.values())
    for name, per_class in counts.items():
        empty = np.flatnonzero(per_class == 0)
        if empty.size == 0:
            continue
        cls = class_names[int(empty[0])]
        more = f" (and {empty.size - 1} more classes)" if empty.size > 1 else ""
        if name in required:
            raise DataError(f"{where}: class {cls!r} has {int(total[empty[0]])} sample(s) in all "
                            f"but none in the {name} split{more}; {hint}")
        logger.warning("%s: class %r has no samples in the %s split%s", where, cls, name, more)
    return {name: [int(v) for v in c] for name, c in counts.items()}
