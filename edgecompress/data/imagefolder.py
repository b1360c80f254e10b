"""Image folders listed without decoding: file names, labels and the image shape.

Scanning a folder reads only directory entries and image headers, so the split (seeded,
stratified, by file list) and the limits are decided before a single image is decoded, and only
the images a split keeps are ever decoded (by :class:`~edgecompress.data.stream.ImageStream`,
in DataLoader workers).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecompress.data.checks import check_class_count
from edgecompress.errors import BackendUnavailable, DataError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
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
