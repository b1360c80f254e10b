"""Calibration subsets for post-training quantisation: sample, save, load and verify.

The subset is stored already normalised, exactly as the model sees it, plus a JSON sidecar with
its shape, normalisation and a SHA-256 of the array file, so every backend (PyTorch, ONNX Runtime,
vendor toolchains) calibrates on the same bytes and a stale or half-written file is rejected.
The format is documented in ``calibration/README.md``.
"""

from __future__ import annotations

import json
import logging
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.data.datasets import DatasetBundle
from edgecompress.data.split import stratified_subsample
from edgecompress.errors import ConfigError, DataError
from edgecompress.io import atomic_path, atomic_write_json, sha256_file

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
NPZ_NAME = "calibration.npz"
SIDECAR_NAME = "calibration.json"
_REQUIRED_KEYS = ("format_version", "num_samples", "input_shape", "dtype", "layout",
                  "normalization", "dataset", "dataset_fingerprint", "seed", "sha256")


def sample_calibration(
    bundle: DatasetBundle, num_samples: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a stratified calibration subset from the train split.

    Calibration data comes from train, never test, so quantisation cannot tune itself on the data
    that later measures its accuracy; stratification keeps every class represented in the ranges.

    Args:
        bundle: The loaded dataset.
        num_samples: Wanted size; silently capped at the size of the train split.
        seed: Seeds the draw; same bundle and seed, same subset in the same order.

    Returns:
        ``(x, y)``: float32 (N, C, H, W) normalised images and int64 (N,) labels (copies).
    """
    if num_samples < 1:
        raise ConfigError(f"calibration num_samples must be at least 1, got {num_samples}")
    available = len(bundle.train)
    if num_samples > available:
        logger.info("calibration: %d samples requested, train split has %d; using all",
                    num_samples, available)
    if min(num_samples, available) < bundle.num_classes:
        # Not fatal (ranges need typical activations, not every class), but worth knowing.
        logger.warning("calibration: %d samples cannot cover the %d classes of %s; raise "
                       "data.calibration_samples to at least %d so every class is represented",
                       min(num_samples, available), bundle.num_classes, bundle.name,
                       bundle.num_classes)
    idx = stratified_subsample(bundle.train.y, min(num_samples, available), seed)
    return bundle.train.x[idx], bundle.train.y[idx]


def save_calibration(
    directory: str | Path, x: np.ndarray, y: np.ndarray, bundle: DatasetBundle, seed: int
) -> Path:
    """Write ``calibration.npz`` and its ``calibration.json`` sidecar into ``directory``.

    The npz is written first and the sidecar (which holds the npz's SHA-256) second, both
    atomically, so an interrupted save is detected by :func:`load_calibration` as a mismatch.

    Args:
        directory: Output folder (created if missing).
        x: Normalised float images, shape (N, *bundle.input_shape).
        y: Integer labels, shape (N,), values in [0, bundle.num_classes).
        bundle: The dataset the subset came from (for shape, normalisation and fingerprint).
        seed: The seed the subset was drawn with (recorded for provenance).

    Returns:
        The path of the written ``calibration.npz``.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    expected = tuple(int(v) for v in bundle.input_shape)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected or x.shape[0] == 0:
        raise DataError(f"calibration x must have shape (N, {', '.join(map(str, expected))}) "
                        f"with N >= 1 for dataset {bundle.name!r}, got shape {x.shape}")
    if x.dtype.kind != "f" or not np.isfinite(x).all():
        raise DataError(f"calibration x must hold finite floats, got dtype {x.dtype} "
                        f"(shape {x.shape})")
    if y.shape != (x.shape[0],) or y.dtype.kind not in "iu":
        raise DataError(f"calibration y must be integer labels of shape ({x.shape[0]},), got "
                        f"dtype {y.dtype} shape {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= bundle.num_classes):
        raise DataError(f"calibration y values must be in [0, {bundle.num_classes}), got "
                        f"[{y.min()}, {y.max()}]")
    directory = Path(directory)
    npz_path = directory / NPZ_NAME
    with atomic_path(npz_path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, x=np.ascontiguousarray(x, dtype=np.float32),
                 y=np.ascontiguousarray(y, dtype=np.int64))
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "num_samples": int(x.shape[0]),
        "input_shape": list(expected),
        "dtype": "float32",
        "layout": "NCHW",
        "normalization": {"mean": [float(v) for v in bundle.mean],
                          "std": [float(v) for v in bundle.std]},
        "dataset": bundle.name,
        "dataset_fingerprint": bundle.fingerprint(),
        "seed": int(seed),
        "sha256": sha256_file(npz_path),
        "num_classes": int(bundle.num_classes),
        "class_names": list(bundle.class_names),
    }
    atomic_write_json(directory / SIDECAR_NAME, meta)
    logger.info("wrote %d calibration samples to %s", meta["num_samples"], npz_path)
    return npz_path


def _resolve(path: Path) -> tuple[Path, Path]:
    if path.is_dir():
        npz_path = path / NPZ_NAME
    elif path.suffix == ".json":
        npz_path = path.with_suffix(".npz")
    else:
        npz_path = path
    return npz_path, npz_path.with_suffix(".json")


def _read_sidecar(sidecar: Path) -> dict[str, Any]:
    if not sidecar.is_file():
        raise DataError(f"calibration sidecar {sidecar} is missing")
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read calibration sidecar {sidecar}: {exc}") from exc
    if not isinstance(meta, dict):
        raise DataError(f"calibration sidecar {sidecar} must hold a JSON object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{sidecar}: format_version {meta.get('format_version')!r} is not "
                        f"supported (expected {FORMAT_VERSION})")
    missing = [k for k in _REQUIRED_KEYS if k not in meta]
    if missing:
        raise DataError(f"{sidecar}: missing keys {missing}")
    if meta["dtype"] != "float32" or meta["layout"] != "NCHW":
        raise DataError(f"{sidecar}: expected dtype float32 and layout NCHW, got "
                        f"{meta['dtype']!r} and {meta['layout']!r}")
    return meta


def load_calibration(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Load a calibration subset and verify it against its sidecar before anyone quantises with it.

    Args:
        path: The directory holding ``calibration.npz``/``calibration.json``, the ``.npz`` itself
            or its ``.json`` sidecar.

    Returns:
        ``(x, meta)``: the float32 NCHW normalised images and the sidecar dict. Labels are in the
        npz under ``y`` for callers that need them.

    Raises:
        DataError: A file is missing or unreadable, the format version is unknown, the npz's
            SHA-256 differs from the sidecar's, or the array shape/dtype disagrees with it.
    """
    npz_path, sidecar = _resolve(Path(path))
    if not npz_path.is_file():
        raise DataError(f"calibration file {npz_path} is missing")
    meta = _read_sidecar(sidecar)
    digest = sha256_file(npz_path)
    if digest != meta["sha256"]:
        raise DataError(f"{npz_path}: SHA-256 {digest[:12]}... does not match {sidecar} "
                        f"({str(meta['sha256'])[:12]}...); the file changed after it was saved "
                        f"or the save was interrupted")
    try:
        with np.load(npz_path, allow_pickle=False) as archive:
            if "x" not in archive.files:
                raise DataError(f"{npz_path}: has no key 'x'; keys present: {archive.files}")
            x = archive["x"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"cannot read calibration file {npz_path}: {exc}") from exc
    expected = (meta["num_samples"], *meta["input_shape"])
    if x.dtype != np.float32 or tuple(x.shape) != tuple(expected):
        raise DataError(f"{npz_path}['x']: dtype {x.dtype} shape {x.shape} does not match "
                        f"{sidecar} (float32, shape {tuple(expected)})")
    return x, meta
