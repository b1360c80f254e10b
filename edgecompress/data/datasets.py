"""load_dataset: one entry point for every source (loaders in :mod:`edgecompress.data.sources`).

Every source becomes NCHW images with int64 labels 0..K-1 (uint8 pixels scaled to [0, 1]), is
split (seeded, stratified, on labels before any pixel is touched) and normalised with train-split
statistics, so the rest of the pipeline sees one shape of data whatever the source was: float32
arrays, or stream views (:mod:`edgecompress.data.stream`) with the same shape and indexing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.data.checks import (
    check_limits,
    check_split_counts,
)
from edgecompress.data.sources import (
    IMAGE_SOURCES,
    load_digits,
    load_hf,
    load_idx,
    load_imagefolder,
    load_npz,
    prepare_arrays,
    should_stream,
)
from edgecompress.data.split import (
    Split,
    compute_normalization,
    fraction_count,
    stratified_split,
    stratified_subsample,
)
from edgecompress.data.split import normalize as normalize_array
from edgecompress.data.stream import (
    PhotoTransforms,
    is_stream,
    stream_statistics,
)
from edgecompress.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

SOURCES = ("digits", "npz", "idx", "imagefolder", "hf")
_FINGERPRINT_VERSION = 1


@dataclass
class DatasetBundle:
    """A dataset split three ways, plus what a later stage needs to reproduce its preprocessing.

    ``mean``/``std`` are the per-channel statistics that were subtracted/divided (computed on the
    train split before normalising); with ``normalize=False`` they are 0/1, i.e. the identity, so
    ``(pixels_in_0_1 - mean) / std`` always reproduces what the model sees.
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, int, int]
    class_names: list[str]
    mean: list[float]
    std: list[float]
    #: What the data is and how it was prepared (source, split sizes, limits, label mapping,
    #: transforms): recorded in dataset.json and the report; not part of the fingerprint.
    info: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """The report's dataset record: name, source, split sizes, limits, transforms."""
        return json.loads(json.dumps({
            "name": self.name, **self.info,
            "samples": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
            "num_classes": int(self.num_classes), "input_shape": list(self.input_shape)}))

    def fingerprint(self) -> str:
        """SHA-256 over every array and the metadata; identical across processes and machines.

        Lets a run directory detect that it was produced from different data (another seed,
        split, file or normalisation) before trusting cached artifacts.
        """
        digest = hashlib.sha256()
        meta = {
            "version": _FINGERPRINT_VERSION,
            "name": self.name,
            "num_classes": int(self.num_classes),
            "input_shape": [int(v) for v in self.input_shape],
            "class_names": list(self.class_names),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
        }
        digest.update(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("utf-8"))
        for split_name, split in (("train", self.train), ("val", self.val), ("test", self.test)):
            for key, arr, dtype in (("x", split.x, "<f4"), ("y", split.y, "<i8")):
                if is_stream(arr):  # file names, sizes and times, not every image's bytes
                    digest.update(f"|{split_name}.{key}:stream{list(arr.shape)}|".encode())
                    arr.fingerprint(digest)
                    continue
                arr = np.ascontiguousarray(arr, dtype=dtype)
                digest.update(f"|{split_name}.{key}:{list(arr.shape)}|".encode())
                digest.update(arr.data)
        return digest.hexdigest()


def _check_options(source: str, path: object, val_fraction: float, test_fraction: float,
                   image_size: tuple[int, int] | None, limits: dict[str, int | None]) -> None:
    if source not in SOURCES:
        raise ConfigError(f"unknown dataset source {source!r}; expected one of {list(SOURCES)}")
    if source != "digits" and path is None:
        raise ConfigError(f"dataset source {source!r} needs a path")
    for label, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise ConfigError(f"{label} must be between 0 and 1 (exclusive), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(f"val_fraction + test_fraction must be < 1, got "
                          f"{val_fraction} + {test_fraction}")
    if image_size is not None and (len(image_size) != 2 or min(image_size) < 1):
        raise ConfigError(f"image_size must be (height, width) with positive sizes, "
                          f"got {image_size!r}")
    for key, value in limits.items():
        if value is not None and (isinstance(value, bool) or value < 1):
            raise ConfigError(f"{key} must be a positive number of samples, got {value}")
    if limits["limit"] is not None and (limits["train_limit"] is not None
                                        or limits["eval_limit"] is not None):
        raise ConfigError("limit cannot be combined with train_limit / eval_limit: limit "
                          "subsamples all data before splitting; use train_limit (training pool) "
                          "and eval_limit (test split) instead")


def _transforms(source: str, raw_dtype_uint8: bool, image_size: tuple[int, int] | None,
                grayscale: bool, normalize: bool, mean: list[float],
                std: list[float]) -> list[dict[str, Any]]:
    """The preprocessing applied to every split, in order (recorded in the report)."""
    steps: list[dict[str, Any]] = []
    if source == "digits":
        steps.append({"op": "scale", "factor": 1 / 16, "why": "digits pixels are 0..16"})
    elif source in IMAGE_SOURCES or raw_dtype_uint8:
        steps.append({"op": "scale", "factor": 1 / 255, "why": "uint8 pixels"})
    if grayscale:
        steps.append({"op": "grayscale", "method": "ITU-R 601 luma"})
    if image_size is not None:
        steps.append({"op": "resize", "size": list(image_size), "interpolation": "bilinear",
                      "antialias": True})
    if normalize:
        steps.append({"op": "normalize", "mean": mean, "std": std,
                      "statistics": "train split"})
    return steps


def _take(x: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of an array (a copy) or of a stream (a view, nothing decoded)."""
    return x.subset(idx) if is_stream(x) else x[idx]


def _check_stream_options(source: str, stream: bool | str, transforms: PhotoTransforms | None,
                          image_size: tuple[int, int] | None, mean: list[float] | None,
                          std: list[float] | None) -> None:
    if stream not in (True, False, "auto"):
        raise ConfigError(f"data.stream must be true, false or 'auto', got {stream!r}")
    if source not in IMAGE_SOURCES and transforms is not None:
        raise ConfigError(f"data.transforms needs an image folder or a Hugging Face dataset "
                          f"(source: imagefolder or hf); source {source!r} holds arrays")
    if transforms is not None:
        if stream is False:
            raise ConfigError("data.transforms (preset photo) decodes every image per batch and "
                              "needs streaming; remove data.stream: false")
        if image_size is not None:
            raise ConfigError("data.image_size and data.transforms cannot be combined: the photo "
                              "transforms resize (resize_size) and crop (crop_size) themselves")
        if not 0.0 < transforms.scale[0] <= transforms.scale[1] <= 1.0:
            raise ConfigError(f"data.transforms.scale must be (min, max) with 0 < min <= max "
                              f"<= 1, got {list(transforms.scale)}")
    if (mean is None) != (std is None):
        raise ConfigError("data.mean and data.std must be given together")
    if std is not None and (len(std) != len(mean) or min(std) <= 0):
        raise ConfigError(f"data.std must have one positive value per mean, got {std}")


def _shrink(idx: np.ndarray, y: np.ndarray, num: int, rng: np.random.Generator) -> np.ndarray:
    """A stratified subset of the index array ``idx`` (labels ``y[idx]``) of ``num`` entries."""
    return idx[stratified_subsample(y[idx], num, rng)]


def load_dataset(
    source: str,
    path: str | Path | None = None,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    seed: int = 0,
    image_size: tuple[int, int] | None = None,
    grayscale: bool = False,
    npz_keys: tuple[str, str] = ("x", "y"),
    normalize: bool = True,
    limit: int | None = None,
    train_limit: int | None = None,
    eval_limit: int | None = None,
    name: str | None = None,
    stream: bool | str = "auto",
    transforms: PhotoTransforms | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    stats_samples: int = 1000,
    workers: int | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
) -> DatasetBundle:
    """Load a dataset, check it, split it reproducibly and normalise it with train statistics.

    One entry point for every source so that recipes only name a source and a path, and every
    later stage (training, pruning, calibration, export parity) sees identical preprocessing.

    Args:
        source: ``"digits"``, ``"npz"``, ``"idx"``, ``"imagefolder"`` or ``"hf"`` (a Hugging
            Face dataset written by ``save_to_disk``).
        path: File (npz) or directory (idx, imagefolder, hf); must be None for digits.
        val_fraction: Share of the samples for validation. When the source ships its own test
            split (npz ``x_test``/``y_test``, idx ``t10k-*``) it is a share of the train part.
        test_fraction: Share of the samples for test; ignored when the source has a test split.
        seed: Seeds the limits' subsamples and the split; same seed, same splits.
        image_size: ``(height, width)`` to resize to (bilinear, antialiased). Required for image
            folders whose images differ in size.
        grayscale: Convert RGB images to one channel (ITU-R 601 luma, as Pillow's ``"L"``).
        npz_keys: Image and label keys of an npz archive that is split here.
        normalize: Subtract the per-channel train mean and divide by the train std. When False,
            ``mean``/``std`` are reported as 0/1 (the identity transform).
        limit: Older, blunter option: a stratified subsample of at most this many samples of
            *all* the data, taken before splitting, so a given test split is shrunk in
            proportion too (logged as a warning and recorded). Prefer ``train_limit``.
        train_limit: At most this many samples in train + val together (stratified, seeded,
            drawn from the full split, so train and val keep their ratio). The test split is the
            same as without the limit: a given test split stays whole.
        eval_limit: At most this many test samples (stratified, seeded); off by default.
        name: The dataset's name in logs and reports (default: the file or directory name).
        stream: ``True`` keeps the splits out of memory: image folders and ``hf`` datasets on
            disk, decoded per batch (:class:`~edgecompress.data.stream.ImageStream`); arrays in
            their own dtype (idx memory-mapped), converted per batch (``ArrayStream``).
            ``False`` holds float32 arrays in memory; ``"auto"`` streams when they would exceed
            512 MiB or when ``transforms`` is set.
        transforms: Real-photo transforms (random resized crop, flip, ...; eval resize + centre
            crop) for image folders; implies streaming and replaces ``image_size``.
        mean, std: Per-channel normalisation to use instead of the train split's statistics.
        stats_samples: Streamed splits compute mean/std on this many seeded train images.
        workers: DataLoader worker processes for streamed splits (default: automatic).
        image_column, label_column: Columns of a Hugging Face dataset (source ``hf``; default
            ``image``/``img`` and ``label``/``labels``).

    Returns:
        The bundle with float32 NCHW splits and int64 labels 0..K-1; ``bundle.describe()`` says
        what was loaded and how.

    Raises:
        ConfigError: An option is invalid (unknown source, fractions out of range, ...).
        DataError: The data is missing, unreadable, of the wrong shape, has bad labels (negative,
            a test label unknown to train, one class), NaN/inf pixels, a limit below the class
            count, or too few samples of a class for the split.
        BackendUnavailable: scikit-learn (digits) or Pillow (imagefolder) is not installed.
    """
    limits = {"limit": limit, "train_limit": train_limit, "eval_limit": eval_limit}
    _check_options(source, path, val_fraction, test_fraction, image_size, limits)
    _check_stream_options(source, stream, transforms, image_size, mean, std)
    if source == "digits":
        raw = load_digits(path)
    elif source == "npz":
        raw = load_npz(Path(path), tuple(npz_keys))
    elif source == "idx":
        raw = load_idx(Path(path))
    elif source == "hf":
        raw = load_hf(Path(path), image_size, grayscale, transforms, workers,
                       (image_column, label_column))
    else:
        raw = load_imagefolder(Path(path), image_size, grayscale, transforms, workers)
    if source not in IMAGE_SOURCES:
        prepare_arrays(raw, stream, image_size, grayscale)
    name = name or raw.name
    where = raw.label_source or name
    num_classes = len(raw.class_names)
    check_limits(limits, num_classes, where)
    rng = np.random.default_rng(seed)
    x, y = raw.x, raw.y
    given_test = raw.x_test is not None
    available = {"pool": int(y.shape[0]),
                 "test": int(raw.y_test.shape[0]) if given_test else None}
    test_shrunk_from = None
    if not given_test:
        if limit is not None and limit < y.shape[0]:
            keep = stratified_subsample(y, limit, rng)
            x, y = _take(x, keep), y[keep]
        train_idx, val_idx, test_idx = stratified_split(y, val_fraction, test_fraction, rng)
        x_test, y_test = None, y[test_idx]  # pixels taken after eval_limit (lazy sources)
    else:
        x_test, y_test = raw.x_test, raw.y_test
        total = y.shape[0] + y_test.shape[0]
        if limit is not None and limit < total:
            n_pool = fraction_count(limit, y.shape[0] / total)
            keep = stratified_subsample(y, n_pool, rng)
            keep_test = stratified_subsample(y_test, limit - n_pool, rng)
            test_shrunk_from = int(y_test.shape[0])
            x, y = _take(x, keep), y[keep]
            x_test, y_test = _take(x_test, keep_test), y_test[keep_test]
            logger.warning("%s: data.limit=%d also shrank the given test split (%s) from %d to "
                           "%d samples; use data.train_limit to limit the training pool only",
                           name, limit, raw.test_source, test_shrunk_from, y_test.shape[0])
        logger.debug("%s ships a test split; test_fraction is not used", name)
        train_idx, val_idx, _ = stratified_split(y, val_fraction, 0.0, rng)
    pool = train_idx.shape[0] + val_idx.shape[0]
    if train_limit is not None and train_limit < pool:
        n_val = fraction_count(train_limit, val_idx.shape[0] / pool)
        train_idx = _shrink(train_idx, y, train_limit - n_val, rng)
        val_idx = _shrink(val_idx, y, n_val, rng)
        logger.info("%s: train_limit=%d: train + val use %d of %d samples", name, train_limit,
                    train_limit, pool)
    if eval_limit is not None and eval_limit < y_test.shape[0]:
        test_shrunk_from = int(y_test.shape[0])
        keep_test = np.sort(stratified_subsample(y_test, eval_limit, rng))
        if x_test is None:
            test_idx = test_idx[keep_test]
        else:
            x_test = _take(x_test, keep_test)
        y_test = y_test[keep_test]
        logger.warning("%s: eval_limit=%d: accuracy is measured on %d of the %d test samples",
                       name, eval_limit, y_test.shape[0], test_shrunk_from)
    sizes = {"train": train_idx.shape[0], "val": val_idx.shape[0], "test": y_test.shape[0]}
    if min(sizes.values()) == 0:
        raise DataError(f"{name}: too few samples to split ({sizes}); use more data, a larger "
                        f"limit or larger fractions")
    required = ["train", "val"] if given_test and eval_limit is None else ["train", "val", "test"]
    y_train, y_val = y[train_idx], y[val_idx]
    per_class = check_split_counts(
        {"train": y_train, "val": y_val, "test": y_test}, raw.class_names, where,
        required=required,
        hint=(f"every class needs samples in train, val and test (val_fraction={val_fraction}"
              + ("" if given_test else f", test_fraction={test_fraction}")
              + "); add samples of this class, remove it, or use a larger limit"))
    streamed = is_stream(x) and (source not in IMAGE_SOURCES or should_stream(
        stream, transforms, sum(sizes.values()) * math.prod(x.shape[1:]) * 4))
    x_train, x_val = _take(x, train_idx), _take(x, val_idx)
    if x_test is None:
        x_test = _take(x, test_idx)
    if is_stream(x) and not streamed:
        # Pixels last: an image folder decodes only the images its splits kept.
        x_train, x_val, x_test = (np.asarray(a) for a in (x_train, x_val, x_test))
    channels = x.shape[1]
    given_stats = mean is not None
    if not given_stats:
        mean, std = [0.0] * channels, [1.0] * channels
        if normalize and streamed:  # arrays: every train image (cheap); files: a sample
            samples = stats_samples if source in IMAGE_SOURCES else len(x_train)
            mean, std = stream_statistics(x_train, samples, seed)
        elif normalize:
            mean, std = compute_normalization(x_train)
    elif len(mean) != channels:
        raise ConfigError(f"data.mean/data.std have {len(mean)} values but the images have "
                          f"{channels} channel(s)")
    if streamed:
        x_train, x_val, x_test = (a.normalized(mean, std) for a in (x_train, x_val, x_test))
    elif normalize or given_stats:
        x_train, x_val, x_test = (normalize_array(a, mean, std) for a in (x_train, x_val, x_test))
    info = {
        "source": source,
        "path": str(Path(path).resolve()) if path is not None else None,
        "test_split": ("given: " + raw.test_source) if given_test
        else f"carved here: test_fraction={test_fraction}, stratified, seed={seed}",
        "val_split": f"carved from the training pool: val_fraction={val_fraction}",
        "available": available,
        "limits": {k: v for k, v in limits.items() if v is not None},
        "test_shrunk_from": test_shrunk_from,
        "label_mapping": raw.label_mapping,
        "class_names": list(raw.class_names),
        "per_class": per_class,
        "transforms": _transforms(source, raw.uint8, image_size, grayscale,
                                  normalize or given_stats, mean, std),
        "streamed": streamed,
    }
    if transforms is not None:
        info["image_transforms"] = transforms.describe()
    if streamed and not given_stats and normalize:
        info["normalization_samples"] = min(stats_samples, len(x_train))
    bundle = DatasetBundle(
        name=name,
        train=Split(x_train, y_train),
        val=Split(x_val, y_val),
        test=Split(x_test, y_test),
        num_classes=num_classes,
        input_shape=(int(channels), int(x.shape[2]), int(x.shape[3])),
        class_names=list(raw.class_names),
        mean=mean,
        std=std,
        info=info,
    )
    logger.info("loaded %s (%s): input %s, %d classes, train/val/test = %d/%d/%d", bundle.name,
                source, bundle.input_shape, bundle.num_classes, sizes["train"], sizes["val"],
                sizes["test"])
    return bundle
