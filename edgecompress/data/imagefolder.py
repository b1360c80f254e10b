"""Image folders read lazily: a file list up front, pixels decoded on demand in DataLoader workers.

Scanning a folder reads only directory entries and image headers, so the split (seeded,
stratified, by file list) and the limits are decided before a single image is decoded, and only
the images a split keeps are ever decoded. Decoding (Pillow: EXIF orientation, mode conversion,
resize) runs in :class:`ImageFolderDataset`, a torch ``Dataset``, through a ``DataLoader`` with
worker processes for large folders.

What this does not do yet (issue 15 item 1): the decoded splits are still held in memory as
numpy arrays, because every stage reads ``ctx.bundle.train.x`` etc. whole. Bounded memory needs
those stages to take a ``Dataset``/``DataLoader`` instead (see :class:`LazyImages`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecompress.data.checks import check_class_count
from edgecompress.errors import BackendUnavailable, DataError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
#: Below this many images per request, decoding in-process beats starting worker processes.
WORKER_THRESHOLD = 512
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def _pil():
    try:
        from PIL import Image, ImageOps
    except ImportError as exc:
        raise BackendUnavailable(
            "source 'imagefolder' needs Pillow: pip install 'edgecompress[data]'") from exc
    return Image, ImageOps


@dataclass
class FolderListing:
    """The files of an image folder, their labels (index into ``classes``) and the image shape."""

    root: Path
    files: list[Path]
    labels: np.ndarray
    classes: list[str]
    shape: tuple[int, int, int]  # (C, H, W) after grayscale / resize


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) as displayed (EXIF orientation applied), reading only the header."""
    Image, _ = _pil()
    try:
        with Image.open(path) as img:
            width, height = img.size
            orientation = img.getexif().get(_EXIF_ORIENTATION)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    return (height, width) if orientation in _TRANSPOSED else (width, height)


def given_split_folders(root: Path) -> tuple[Path, Path] | None:
    """``(root/train, root/test)`` when the folder ships its own test split, else None.

    The layout is ``root/train/<class>/*`` and ``root/test/<class>/*``; a dataset whose classes
    happen to be called "train" and "test" holds images, not class folders, in them.
    """
    train, test = root / "train", root / "test"
    if train.is_dir() and test.is_dir() and any(p.is_dir() for p in train.iterdir()):
        return train, test
    return None


def scan_image_folder(root: Path, image_size: tuple[int, int] | None, grayscale: bool,
                      classes: list[str] | None = None) -> FolderListing:
    """List ``root/<class>/*.<image>`` (classes sorted by name) without decoding any pixels.

    Without ``image_size`` every image header is read to check that all sizes agree.

    Args:
        classes: The training folder's classes, when ``root`` is a given test folder: its class
            folders must be among them (labels index into them), and some may be absent.

    Raises:
        DataError: no class folders, an empty class folder, one class, a test class unknown to
            train, an unreadable image header, or differing sizes without ``image_size``.
    """
    _pil()
    if not root.is_dir():
        raise DataError(f"image folder {root} is not a directory")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DataError(f"{root}: no class folders found (expected {root}/<class_name>/*.png)")
    if classes is None:
        classes = found
        check_class_count(len(classes), f"image folder {root} (class folders: {classes})")
    else:
        unknown = [c for c in found if c not in classes]
        if unknown:
            raise DataError(f"test class folder {root / unknown[0]} has no counterpart in the "
                            f"training folder (its classes: {classes[:20]})")
    files: list[Path] = []
    labels: list[int] = []
    for k, cls in enumerate(classes):
        if cls not in found:
            continue
        images = sorted(p for p in (root / cls).iterdir() if p.is_file()
                        and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
        if not images:
            raise DataError(f"class folder {root / cls} contains no images "
                            f"({', '.join(IMAGE_EXTENSIONS)})")
        files += images
        labels += [k] * len(images)
    return FolderListing(root, files, np.asarray(labels, np.int64), classes,
                         image_shape(files, image_size, grayscale))


def image_shape(files: list[Path], image_size: tuple[int, int] | None,
                grayscale: bool) -> tuple[int, int, int]:
    """(C, H, W) the images decode to; without ``image_size`` all headers must agree."""
    if image_size is None:
        first = _header_size(files[0])
        for file in files[1:]:
            size = _header_size(file)
            if size != first:
                raise DataError(f"images differ in size: {files[0]} is {first[0]}x{first[1]} "
                                f"but {file} is {size[0]}x{size[1]} (width x height); pass "
                                f"image_size=(H, W) to resize them")
        height, width = first[1], first[0]
    else:
        height, width = image_size
    return (1 if grayscale else 3, int(height), int(width))


class ImageFolderDataset:
    """A torch-style ``Dataset`` over image files: item ``i`` is ``(pixels, label)``.

    ``pixels`` is a uint8 (C, H, W) array, decoded (EXIF orientation, RGB or L, bilinear resize)
    when the item is read, i.e. in the DataLoader worker. A file that cannot be decoded yields its
    error message as a string instead, so the main process raises one clean DataError naming the
    file (an exception raised inside a worker would reach the user wrapped in a traceback).
    """

    def __init__(self, files: list[Path], labels: np.ndarray, image_size: tuple[int, int] | None,
                 grayscale: bool) -> None:
        self.files = list(files)
        self.labels = np.asarray(labels, np.int64)
        self.image_size = image_size
        self.mode = "L" if grayscale else "RGB"

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[np.ndarray | str, int]:
        Image, ImageOps = _pil()
        file = self.files[i]
        try:
            with Image.open(file) as img:
                img = ImageOps.exif_transpose(img).convert(self.mode)
            if self.image_size is not None:
                img = img.resize((self.image_size[1], self.image_size[0]),
                                 Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            return f"cannot read image {file}: {exc}", int(self.labels[i])
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return np.ascontiguousarray(arr), int(self.labels[i])


def _collate(batch: list) -> list:
    return batch


class LazyImages:
    """The pixels of an image folder as an array-like that decodes only the rows it is asked for.

    ``images[idx]`` (an index array or slice) returns float32 (len, C, H, W) scaled to [0, 1], in
    the order of ``idx``. It is what ``load_dataset`` indexes to build its splits, so a split, a
    ``train_limit`` or an ``eval_limit`` decodes only the images it keeps. The step to bounded
    memory is for the training stages to read batches from :class:`ImageFolderDataset` through a
    DataLoader instead of taking ``bundle.train.x`` whole.
    """

    ndim = 4
    dtype = np.dtype(np.float32)

    def __init__(self, listing: FolderListing, image_size: tuple[int, int] | None,
                 grayscale: bool, workers: int | None = None) -> None:
        self.listing = listing
        self.dataset = ImageFolderDataset(listing.files, listing.labels, image_size, grayscale)
        self.shape = (len(listing.files), *listing.shape)
        self.workers = workers

    def __len__(self) -> int:
        return self.shape[0]

    def _workers(self, count: int) -> int:
        if self.workers is not None:
            return self.workers
        if count < WORKER_THRESHOLD:
            return 0
        return max(0, min(4, (os.cpu_count() or 1) - 1))

    def __getitem__(self, idx: np.ndarray | slice | list[int]) -> np.ndarray:
        import torch.utils.data as tud

        rows = np.arange(self.shape[0])[idx]
        rows = np.atleast_1d(rows).astype(np.int64)
        out = np.empty((rows.shape[0], *self.shape[1:]), dtype=np.float32)
        workers = self._workers(rows.shape[0])
        loader = tud.DataLoader(tud.Subset(self.dataset, rows.tolist()), batch_size=64,
                                shuffle=False, num_workers=workers, collate_fn=_collate)
        start = 0
        for batch in loader:
            for pixels, _ in batch:
                if isinstance(pixels, str):
                    raise DataError(pixels)
                if pixels.shape != self.shape[1:]:
                    raise DataError(f"{self.listing.files[rows[start]]}: decoded to shape "
                                    f"{pixels.shape} (C, H, W), expected {self.shape[1:]}")
                out[start] = pixels
                start += 1
        out /= np.float32(255.0)
        logger.debug("decoded %d images of %s with %d workers", rows.shape[0],
                     self.listing.root, workers)
        return out
