"""Dataset loaders: sklearn digits, NPZ archives, MNIST-style IDX files and image folders.

Every source is first turned into float32 NCHW images (uint8 pixels scaled to [0, 1]) with int64
labels 0..K-1, then split (seeded, stratified) and normalised with train-split statistics, so the
rest of the pipeline sees one shape of data whatever the source was.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.data.checks import (
    check_finite,
    check_limits,
    check_split_counts,
    encode_labels,
)
from edgecompress.data.imagefolder import FolderListing, given_split_folders, scan_image_folder
from edgecompress.data.imageindex import INDEX_SUFFIXES, scan_image_index
from edgecompress.data.split import (
    Split,
    compute_normalization,
    fraction_count,
    stratified_split,
    stratified_subsample,
)
from edgecompress.data.split import normalize as normalize_array
from edgecompress.data.stream import (
    STREAM_BYTES,
    ArrayStream,
    ImageStream,
    PhotoTransforms,
    adapt_pixels,
    is_stream,
    stream_statistics,
)
from edgecompress.errors import BackendUnavailable, ConfigError, DataError

logger = logging.getLogger(__name__)

SOURCES = ("digits", "npz", "idx", "imagefolder", "hf")
#: Sources whose images stay encoded until a split needs them (streamable).
IMAGE_SOURCES = ("imagefolder", "hf")
# IDX type codes -> big-endian numpy dtypes (http://yann.lecun.com/exdb/mnist/).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
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


@dataclass
class _Raw:
    """A loaded but not yet split source: float32 NCHW pixels, int64 labels 0..K-1."""

    name: str
    x: np.ndarray
    y: np.ndarray
    class_names: list[str]
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    #: Where the labels came from (a file, or file[key]): named in data errors.
    label_source: str = ""
    #: Where the given test labels came from, if the source ships a test split.
    test_source: str = ""
    #: Original label -> class index, when the labels were not already 0..K-1.
    label_mapping: dict[str, int] | None = None
    #: Whether the pixels were uint8 (scaled by 1/255).
    uint8: bool = False


def _nchw_view(x: np.ndarray, where: str) -> np.ndarray:
    """Images as an (N, C, H, W) view in their own dtype (no copy; checked: shape, numeric)."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        # Channels-last only when the last axis looks like channels and axis 1 does not; an
        # ambiguous (N, 3, H, 3) or (N, 1, H, 1) array is read as channels-first.
        if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            logger.info("%s: shape %s read as (N, H, W, C)", where, x.shape)
            x = x.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{where}: images must have shape (N, H, W), (N, C, H, W) or "
                        f"(N, H, W, C) with C in {{1, 3}}; got shape {x.shape}")
    if x.shape[0] == 0:
        raise DataError(f"{where}: contains no images (shape {x.shape})")
    if x.dtype.kind not in "biuf":
        raise DataError(f"{where}: images must be numeric, got dtype {x.dtype} (shape {x.shape})")
    if x.dtype.kind == "f":  # in chunks: the check's temporaries stay small
        for start in range(0, x.shape[0], 4096):
            try:
                check_finite(np.asarray(x[start:start + 4096]), where)
            except DataError as exc:
                if start == 0:
                    raise
                raise DataError(f"{exc} (in the rows from {start} on)") from None
    return x


def _to_float(x: np.ndarray, where: str) -> np.ndarray:
    """float32 NCHW pixels; uint8 is scaled by 1/255, other dtypes keep their values."""
    out = np.ascontiguousarray(x, dtype=np.float32)
    if x.dtype == np.uint8:
        out /= np.float32(255.0)
    return out


def _check_lengths(x: np.ndarray, y: np.ndarray, where_x: str, where_y: str) -> None:
    for arr, where in ((x, where_x), (y, where_y)):
        if arr.ndim == 0:
            raise DataError(f"{where} is a scalar, expected one entry per sample")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{where_x} has {x.shape[0]} images (shape {x.shape}) but {where_y} has "
                        f"{y.shape[0]} labels (shape {y.shape})")


def _load_digits(path: str | Path | None) -> _Raw:
    if path is not None:
        raise ConfigError(f"source 'digits' is built in and takes no path, got path={path!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise BackendUnavailable(
            "source 'digits' needs scikit-learn: pip install 'edgecompress[data]'") from exc
    digits = load_digits()
    x = (digits.images.astype(np.float32) / np.float32(16.0))[:, None]
    return _Raw("digits", np.ascontiguousarray(x), digits.target.astype(np.int64),
                [str(int(t)) for t in digits.target_names], label_source="sklearn load_digits")


def _load_npz(path: Path, npz_keys: tuple[str, str]) -> _Raw:
    if not path.is_file():
        raise DataError(f"npz file {path} does not exist")
    kx, ky = npz_keys
    split_keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DataError(f"{path} holds a single array of shape {archive.shape}, not an .npz "
                            f"archive with keys {kx!r} and {ky!r}")
        with archive:
            keys = set(archive.files)
            if kx in keys and ky in keys:
                arrays = {k: archive[k] for k in (kx, ky)}
            elif all(k in keys for k in split_keys):
                arrays = {k: archive[k] for k in split_keys}
            else:
                raise DataError(f"{path}: needs keys {kx!r} and {ky!r} (or x_train, y_train, "
                                f"x_test, y_test); keys present: {sorted(keys)}")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"cannot read npz file {path}: {exc}") from exc
    name = path.stem
    if kx in arrays:
        _check_lengths(arrays[kx], arrays[ky], f"{path}[{kx!r}]", f"{path}[{ky!r}]")
        x = _nchw_view(arrays[kx], f"{path}[{kx!r}]")
        (y,), names, mapping = encode_labels([(arrays[ky], f"{path}[{ky!r}]")])
        return _Raw(name, x, y, names, label_source=f"{path}[{ky!r}]", label_mapping=mapping,
                    uint8=arrays[kx].dtype == np.uint8)
    where = {k: f"{path}[{k!r}]" for k in split_keys}
    for part in ("train", "test"):
        _check_lengths(arrays[f"x_{part}"], arrays[f"y_{part}"], where[f"x_{part}"],
                       where[f"y_{part}"])
    x_tr = _nchw_view(arrays["x_train"], where["x_train"])
    x_te = _nchw_view(arrays["x_test"], where["x_test"])
    (y_tr, y_te), names, mapping = encode_labels([(arrays["y_train"], where["y_train"]),
                                                  (arrays["y_test"], where["y_test"])])
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DataError(f"{where['x_train']} images have shape {x_tr.shape[1:]} (C, H, W) but "
                        f"{where['x_test']} images have shape {x_te.shape[1:]}")
    return _Raw(name, x_tr, y_tr, names, x_te, y_te, label_source=where["y_train"],
                test_source=where["y_test"], label_mapping=mapping,
                uint8=arrays["x_train"].dtype == np.uint8)


def _read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (optionally gzip-compressed), checking its header against its size."""
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                data = fh.read()
        elif path.stat().st_size == 0:
            data = b""
        else:  # memory-mapped: a streamed split reads only the rows it needs
            data = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path} is not an IDX file (magic bytes "
                        f"{bytes(data[:4]).hex() or 'missing'})")
    code, ndim = int(data[2]), int(data[3])
    if code not in _IDX_DTYPES or ndim == 0:
        raise DataError(f"{path}: unsupported IDX header (type code 0x{code:02x}, {ndim} dims)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX file ({len(data)} bytes, header needs {header})")
    dims = [int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4)]
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        problem = "truncated IDX file" if len(data) < expected else "IDX file has trailing bytes"
        raise DataError(f"{path}: {problem}: header says shape {tuple(dims)} ({expected} bytes) "
                        f"but the file has {len(data)} bytes")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False)  # uint8: still the mapped file


def _find_idx(directory: Path, prefix: str, kind: str, ndim: int) -> Path | None:
    for stem in (f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"):
        for suffix in ("", ".gz"):
            candidate = directory / (stem + suffix)
            if candidate.is_file():
                return candidate
    return None


def _load_idx(directory: Path) -> _Raw:
    if not directory.is_dir():
        raise DataError(f"idx source needs a directory of MNIST-format files; {directory} is not "
                        f"a directory")
    found = {(p, k): _find_idx(directory, p, k, 3 if k == "images" else 1)
             for p in ("train", "t10k") for k in ("images", "labels")}
    for key in (("train", "images"), ("train", "labels")):
        if found[key] is None:
            present = sorted(p.name for p in directory.iterdir())[:20]
            raise DataError(f"{directory}: missing {key[0]}-{key[1]}-idx"
                            f"{3 if key[1] == 'images' else 1}-ubyte[.gz]; files present: "
                            f"{present}")
    if (found["t10k", "images"] is None) != (found["t10k", "labels"] is None):
        missing = "images" if found["t10k", "images"] is None else "labels"
        raise DataError(f"{directory}: has only one of the t10k files; t10k-{missing} is missing")
    has_test = found["t10k", "images"] is not None
    prefixes = ("train", "t10k") if has_test else ("train",)
    images = {p: _read_idx(found[p, "images"]) for p in prefixes}
    labels = {p: _read_idx(found[p, "labels"]) for p in prefixes}
    for p in prefixes:
        _check_lengths(images[p], labels[p], str(found[p, "images"]), str(found[p, "labels"]))
    xs = {p: _nchw_view(images[p], str(found[p, "images"])) for p in prefixes}
    ys, names, mapping = encode_labels([(labels[p], str(found[p, "labels"])) for p in prefixes])
    name = directory.resolve().name
    sources = {"label_source": str(found["train", "labels"]), "label_mapping": mapping,
               "uint8": images["train"].dtype == np.uint8}
    if not has_test:
        return _Raw(name, xs["train"], ys[0], names, **sources)
    if xs["train"].shape[1:] != xs["t10k"].shape[1:]:
        raise DataError(f"{found['train', 'images']} images have shape {xs['train'].shape[1:]} "
                        f"but {found['t10k', 'images']} images have {xs['t10k'].shape[1:]}")
    return _Raw(name, xs["train"], ys[0], names, xs["t10k"], ys[1],
                test_source=str(found["t10k", "labels"]), **sources)


def _load_imagefolder(root: Path, image_size: tuple[int, int] | None, grayscale: bool,
                      transforms: PhotoTransforms | None, workers: int | None) -> _Raw:
    """List the folder (headers only); pixels are decoded later, only for the rows kept.

    ``root/train/<class>`` + ``root/test/<class>`` is a given train/test split; otherwise
    ``root/<class>`` is split here. A ``.csv``/``.json`` index file lists ``path,label[,split]``.
    The images become :class:`ImageStream` views (nothing decoded). With photo transforms the
    shape is (C, crop, crop), so headers of differently sized photos are not compared.
    """
    crop = transforms.crop_size if transforms is not None else None
    scan_size = (crop, crop) if crop else image_size

    def stream(listing: FolderListing) -> ImageStream:
        return ImageStream(listing.files, np.arange(len(listing.files)), listing.shape,
                           grayscale=grayscale, image_size=image_size, photo=transforms,
                           workers=workers)

    if root.suffix.lower() in INDEX_SUFFIXES:
        train, test, mapping = scan_image_index(root, scan_size, grayscale)
        return _Raw(root.stem, stream(train), train.labels, train.classes,
                    None if test is None else stream(test),
                    None if test is None else test.labels,
                    label_source=f"image index {root}",
                    test_source=f"image index {root} (split=test rows)", label_mapping=mapping)
    given = given_split_folders(root)
    if given is None:
        listing = scan_image_folder(root, scan_size, grayscale)
        return _Raw(root.resolve().name, stream(listing), listing.labels, listing.classes,
                    label_source=f"image folder {root}")
    train = scan_image_folder(given[0], scan_size, grayscale)
    test = scan_image_folder(given[1], scan_size, grayscale, classes=train.classes)
    if train.shape != test.shape:
        raise DataError(f"images in {given[0]} have shape {train.shape} (C, H, W) but images in "
                        f"{given[1]} have {test.shape}; pass image_size=(H, W) to resize them")
    return _Raw(root.resolve().name, stream(train), train.labels, train.classes, stream(test),
                test.labels, label_source=f"image folder {given[0]}",
                test_source=f"image folder {given[1]}")


def _load_hf(path: Path, image_size: tuple[int, int] | None, grayscale: bool,
             transforms: PhotoTransforms | None, workers: int | None,
             columns: tuple[str | None, str | None]) -> _Raw:
    """A Hugging Face dataset saved to disk: labels read now, images decoded per batch later."""
    from edgecompress.data.hfdisk import image_shape_of, scan_hf_dataset

    scan = scan_hf_dataset(path, *columns)
    sources = scan["sources"]
    if transforms is not None:
        shape = (1 if grayscale else 3, transforms.crop_size, transforms.crop_size)
    elif image_size is not None:
        shape = (1 if grayscale else 3, *image_size)
    else:
        shape = image_shape_of(sources["train"], grayscale)
        if "test" in sources and image_shape_of(sources["test"], grayscale) != shape:
            raise DataError(f"{path}: test images differ in size from train images; set "
                            f"data.image_size or data.transforms")

    def stream(role: str) -> ImageStream:
        return ImageStream(sources[role], np.arange(len(sources[role])), shape,
                           grayscale=grayscale, image_size=image_size, photo=transforms,
                           workers=workers)

    labels = scan["labels"]
    given = "test" in sources
    return _Raw(path.resolve().name, stream("train"), labels["train"], scan["class_names"],
                stream("test") if given else None, labels["test"] if given else None,
                label_source=scan["label_source"], test_source=scan["test_source"],
                label_mapping=scan["label_mapping"])


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


def _prepare_arrays(raw: _Raw, stream: bool | str, image_size: tuple[int, int] | None,
                    grayscale: bool) -> None:
    """Array sources: float32 copies adapted to ``image_size``/``grayscale`` (in memory), or,
    when streamed, :class:`ArrayStream` views of the arrays in their own dtype."""
    count = raw.x.shape[0] + (raw.x_test.shape[0] if raw.x_test is not None else 0)
    nbytes = count * math.prod(raw.x.shape[1:]) * 4
    if stream is not False and _should_stream(stream, None, nbytes):
        where = raw.label_source or raw.name
        raw.x = ArrayStream(raw.x, np.arange(raw.x.shape[0]), where=where, grayscale=grayscale,
                            image_size=image_size)
        if raw.x_test is not None:
            raw.x_test = ArrayStream(raw.x_test, np.arange(raw.x_test.shape[0]),
                                     where=raw.test_source or where, grayscale=grayscale,
                                     image_size=image_size)
        return
    raw.x = adapt_pixels(_to_float(raw.x, raw.name), image_size, grayscale, raw.name)
    if raw.x_test is not None:
        raw.x_test = adapt_pixels(_to_float(raw.x_test, raw.name), image_size, grayscale,
                                  raw.name)


def _take(x: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of an array (a copy) or of a stream (a view, nothing decoded)."""
    return x.subset(idx) if is_stream(x) else x[idx]


def _should_stream(stream: bool | str, transforms: PhotoTransforms | None,
                   nbytes: int) -> bool:
    if transforms is not None:
        return True
    if stream == "auto":
        if nbytes > STREAM_BYTES:
            logger.info("streaming the data: its images would take %.0f MiB as float32 "
                        "(data.stream: false keeps them in memory)", nbytes / 2**20)
            return True
        return False
    return bool(stream)


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
        raw = _load_digits(path)
    elif source == "npz":
        raw = _load_npz(Path(path), tuple(npz_keys))
    elif source == "idx":
        raw = _load_idx(Path(path))
    elif source == "hf":
        raw = _load_hf(Path(path), image_size, grayscale, transforms, workers,
                       (image_column, label_column))
    else:
        raw = _load_imagefolder(Path(path), image_size, grayscale, transforms, workers)
    if source not in IMAGE_SOURCES:
        _prepare_arrays(raw, stream, image_size, grayscale)
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
    streamed = is_stream(x) and (source not in IMAGE_SOURCES or _should_stream(
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
