"""Where images and labels come from: one loader per source (digits, npz, idx, image folders,
Hugging Face datasets on disk), each returning a :class:`RawSource` that is not split yet.

Array sources keep their own dtype here (an uncompressed idx file stays memory-mapped);
:func:`prepare_arrays` then makes float32 copies, or stream views when the data is streamed.
Image sources are :class:`~edgecompress.data.stream.ImageStream` views from the start: nothing is
decoded until a split needs it.
"""

from __future__ import annotations

import gzip
import logging
import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecompress.data.arraystream import ArrayStream, adapt_pixels
from edgecompress.data.checks import check_finite, encode_labels
from edgecompress.data.imagefolder import FolderListing, given_split_folders, scan_image_folder
from edgecompress.data.imageindex import INDEX_SUFFIXES, scan_image_index
from edgecompress.data.stream import STREAM_BYTES, ImageStream, PhotoTransforms
from edgecompress.errors import BackendUnavailable, ConfigError, DataError

logger = logging.getLogger(__name__)

#: Sources whose images stay encoded until a split needs them.
IMAGE_SOURCES = ("imagefolder", "hf")

# IDX type codes -> big-endian numpy dtypes (http://yann.lecun.com/exdb/mnist/).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class RawSource:
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


def load_digits(path: str | Path | None) -> RawSource:
    if path is not None:
        raise ConfigError(f"source 'digits' is built in and takes no path, got path={path!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise BackendUnavailable(
            "source 'digits' needs scikit-learn: pip install 'edgecompress[data]'") from exc
    digits = load_digits()
    x = (digits.images.astype(np.float32) / np.float32(16.0))[:, None]
    return RawSource("digits", np.ascontiguousarray(x), digits.target.astype(np.int64),
                [str(int(t)) for t in digits.target_names], label_source="sklearn load_digits")


def load_npz(path: Path, npz_keys: tuple[str, str]) -> RawSource:
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
        return RawSource(name, x, y, names, label_source=f"{path}[{ky!r}]", label_mapping=mapping,
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
    return RawSource(name, x_tr, y_tr, names, x_te, y_te, label_source=where["y_train"],
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


def load_idx(directory: Path) -> RawSource:
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
        return RawSource(name, xs["train"], ys[0], names, **sources)
    if xs["train"].shape[1:] != xs["t10k"].shape[1:]:
        raise DataError(f"{found['train', 'images']} images have shape {xs['train'].shape[1:]} "
                        f"but {found['t10k', 'images']} images have {xs['t10k'].shape[1:]}")
    return RawSource(name, xs["train"], ys[0], names, xs["t10k"], ys[1],
                test_source=str(found["t10k", "labels"]), **sources)


def load_imagefolder(root: Path, image_size: tuple[int, int] | None, grayscale: bool,
                      transforms: PhotoTransforms | None, workers: int | None) -> RawSource:
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
        return RawSource(root.stem, stream(train), train.labels, train.classes,
                    None if test is None else stream(test),
                    None if test is None else test.labels,
                    label_source=f"image index {root}",
                    test_source=f"image index {root} (split=test rows)", label_mapping=mapping)
    given = given_split_folders(root)
    if given is None:
        listing = scan_image_folder(root, scan_size, grayscale)
        return RawSource(root.resolve().name, stream(listing), listing.labels, listing.classes,
                    label_source=f"image folder {root}")
    train = scan_image_folder(given[0], scan_size, grayscale)
    test = scan_image_folder(given[1], scan_size, grayscale, classes=train.classes)
    if train.shape != test.shape:
        raise DataError(f"images in {given[0]} have shape {train.shape} (C, H, W) but images in "
                        f"{given[1]} have {test.shape}; pass image_size=(H, W) to resize them")
    return RawSource(root.resolve().name, stream(train), train.labels, train.classes, stream(test),
                test.labels, label_source=f"image folder {given[0]}",
                test_source=f"image folder {given[1]}")


def load_hf(path: Path, image_size: tuple[int, int] | None, grayscale: bool,
             transforms: PhotoTransforms | None, workers: int | None,
             columns: tuple[str | None, str | None]) -> RawSource:
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
    return RawSource(path.resolve().name, stream("train"), labels["train"], scan["class_names"],
                stream("test") if given else None, labels["test"] if given else None,
                label_source=scan["label_source"], test_source=scan["test_source"],
                label_mapping=scan["label_mapping"])


def prepare_arrays(raw: RawSource, stream: bool | str, image_size: tuple[int, int] | None,
                    grayscale: bool) -> None:
    """Array sources: float32 copies adapted to ``image_size``/``grayscale`` (in memory), or,
    when streamed, :class:`ArrayStream` views of the arrays in their own dtype."""
    count = raw.x.shape[0] + (raw.x_test.shape[0] if raw.x_test is not None else 0)
    nbytes = count * math.prod(raw.x.shape[1:]) * 4
    if stream is not False and should_stream(stream, None, nbytes):
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


def should_stream(stream: bool | str, transforms: PhotoTransforms | None,
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
