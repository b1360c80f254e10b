"""Image splits streamed from disk: decoded per batch in DataLoader workers, never held whole.

An :class:`ImageStream` stands where a split's ``x`` array stands (``bundle.train.x``): it has a
``shape``, ``len`` and numpy-style indexing (``x[:2]``, ``x[index_array]`` return normalised
float32 arrays), so code that reads a few rows or walks the split in slices works unchanged. The
training loop and :func:`~edgecompress.training.predict_logits` ask it for whole epochs with
:meth:`ImageStream.batches`, which runs one DataLoader (workers decode, transform and return
uint8 pixels; the main process normalises), so memory holds a few batches whatever the number of
images.

Two kinds of transforms:

* ``resize`` (default): every image decoded to ``image_size`` (bilinear), as the in-memory path
  does, so a small folder gives the same pixels streamed or not.
* ``photo``: the usual ImageNet-style recipe for real photos, from torchvision transforms v2:
  train ``RandomResizedCrop`` + horizontal flip (+ optional colour jitter / RandAugment); eval
  ``Resize`` + ``CenterCrop``. Random train transforms apply only to training batches
  (:meth:`batches` with ``train=True``); indexing, calibration and evaluation always see the
  deterministic eval transform.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import BackendUnavailable, DataError

logger = logging.getLogger(__name__)

#: Streaming starts (``stream: auto``) when a folder's kept images would take more than this
#: many bytes as float32 arrays.
STREAM_BYTES = 512 * 2**20
#: Below this many images per request, decoding in-process beats starting worker processes.
WORKER_THRESHOLD = 512


@dataclass(frozen=True)
class PhotoTransforms:
    """Train/eval transforms for real photos (torchvision transforms v2 defaults)."""

    crop_size: int = 224
    resize_size: int | None = None  # eval resize of the shorter side; default crop * 256 / 224
    scale: tuple[float, float] = (0.08, 1.0)
    hflip: bool = True
    color_jitter: float = 0.0
    randaugment: bool = False

    @property
    def eval_resize(self) -> int:
        return self.resize_size or int(round(self.crop_size * 256 / 224))

    def describe(self) -> dict[str, Any]:
        """The report's record of the train and eval transforms."""
        train: list[dict[str, Any]] = [{"op": "RandomResizedCrop", "size": self.crop_size,
                                        "scale": list(self.scale)}]
        if self.hflip:
            train.append({"op": "RandomHorizontalFlip", "p": 0.5})
        if self.color_jitter > 0:
            train.append({"op": "ColorJitter", "brightness": self.color_jitter,
                          "contrast": self.color_jitter, "saturation": self.color_jitter})
        if self.randaugment:
            train.append({"op": "RandAugment"})
        return {"preset": "photo", "library": "torchvision.transforms.v2", "train": train,
                "eval": [{"op": "Resize", "size": self.eval_resize},
                         {"op": "CenterCrop", "size": self.crop_size}],
                **{k: v for k, v in asdict(self).items() if k == "resize_size" and v}}


def _v2():
    try:  # edgecompress/__init__ has installed the torchvision import fix
        from torchvision.transforms import v2
    except ImportError as exc:
        raise BackendUnavailable("data.transforms preset 'photo' needs torchvision: pip install "
                                 "'edgecompress[zoo]'") from exc
    return v2


def photo_pipelines(photo: PhotoTransforms) -> tuple[Callable, Callable]:
    """(train, eval) callables: PIL image -> uint8 tensor (C, crop, crop)."""
    import torch

    v2 = _v2()
    tail = [v2.PILToTensor(), v2.ToDtype(torch.uint8)]
    train = [v2.RandomResizedCrop(photo.crop_size, scale=tuple(photo.scale), antialias=True)]
    if photo.hflip:
        train.append(v2.RandomHorizontalFlip())
    if photo.color_jitter > 0:
        j = photo.color_jitter
        train.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
    if photo.randaugment:
        train.append(v2.RandAugment())
    evaluate = [v2.Resize(photo.eval_resize, antialias=True), v2.CenterCrop(photo.crop_size)]
    return v2.Compose([*train, *tail]), v2.Compose([*evaluate, *tail])


class _Resize:
    """The default transform: bilinear resize to ``(H, W)`` (or none), as the in-memory path."""

    def __init__(self, size: tuple[int, int] | None) -> None:
        self.size = size

    def __call__(self, img):
        from PIL import Image

        if self.size is not None:
            img = img.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


class FileImages:
    """Image files on disk as an image source: ``open(i)`` is a PIL image of file ``i``."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = list(files)

    def __len__(self) -> int:
        return len(self.files)

    def open(self, i: int):
        from PIL import Image

        return Image.open(self.files[i])

    def name(self, i: int) -> str:
        return str(self.files[i])

    def fingerprint(self, rows: np.ndarray, digest: Any) -> None:
        """Each file's name, size and modification time (as make does; hashing every image's
        bytes would read the whole dataset)."""
        files = hashlib.sha256()
        for row in rows.tolist():
            file = self.files[row]
            try:
                stat = os.stat(file)
            except OSError as exc:
                raise DataError(f"cannot read image {file}: {exc}") from exc
            files.update(f"{file}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        digest.update(files.digest())


class _Decode:
    """Dataset over an image source: item ``i`` is a uint8 (C, H, W) array, or an error string
    (a worker's exception would reach the user as a traceback; the main process raises a
    DataError)."""

    def __init__(self, source: Any, mode: str, transform: Callable) -> None:
        self.source, self.mode, self.transform = source, mode, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> np.ndarray | str:
        from PIL import Image, ImageOps

        file = self.source.name(i)
        try:
            with self.source.open(i) as img:
                img = ImageOps.exif_transpose(img).convert(self.mode)
            arr = np.asarray(self.transform(img), dtype=np.uint8)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            return f"cannot read image {file}: {exc}"
        if arr.ndim == 2:
            arr = arr[None]
        elif arr.shape[-1] in (1, 3) and arr.shape[0] not in (1, 3):
            arr = arr.transpose(2, 0, 1)
        return np.ascontiguousarray(arr)


def _collate(batch: list) -> list:
    return batch


class ImageStream:
    """A split's images as a lazy, normalised float32 (N, C, H, W) array (see module docstring).

    Args:
        files: every image file of the source (a split refers to some of them by ``rows``), or
            an image source with ``open(i)``/``name(i)``/``fingerprint`` (:class:`FileImages`,
            a Hugging Face dataset on disk).
        rows: indices into ``files`` of this split's images, in order.
        shape: (C, H, W) every image decodes to.
        grayscale: decode to one channel.
        image_size: the ``resize`` transform's (H, W); ignored with ``photo``.
        photo: real-photo transforms, or None for ``resize``.
        mean, std: per-channel normalisation of pixels scaled to [0, 1].
        workers: DataLoader worker processes (None: 0 for small requests, else up to 4).
    """

    ndim = 4
    dtype = np.dtype(np.float32)

    def __init__(self, files: Sequence[Path], rows: np.ndarray, shape: tuple[int, int, int], *,
                 grayscale: bool = False, image_size: tuple[int, int] | None = None,
                 photo: PhotoTransforms | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, workers: int | None = None) -> None:
        self.files = files if hasattr(files, "open") else FileImages(files)
        self.rows = np.asarray(rows, np.int64)
        self.image_shape = tuple(int(v) for v in shape)
        self.grayscale, self.image_size, self.photo = grayscale, image_size, photo
        channels = self.image_shape[0]
        self.mean = np.asarray(mean if mean is not None else [0.0] * channels, np.float32)
        self.std = np.asarray(std if std is not None else [1.0] * channels, np.float32)
        self.workers = workers
        self._pipelines: tuple[Callable, Callable] | None = None

    # -- array-like surface -------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (int(self.rows.shape[0]), *self.image_shape)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def __getitem__(self, idx: Any) -> np.ndarray:
        positions = np.atleast_1d(np.arange(len(self))[idx]).astype(np.int64)
        return self._gather(positions)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        logger.debug("materialising %d streamed images", len(self))
        out = self._gather(np.arange(len(self)))
        return out if dtype is None else out.astype(dtype)

    # -- derived streams ----------------------------------------------------------------------
    def _derive(self, rows: np.ndarray | None = None, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None) -> ImageStream:
        return ImageStream(self.files, self.rows if rows is None else rows, self.image_shape,
                           grayscale=self.grayscale, image_size=self.image_size,
                           photo=self.photo, mean=self.mean if mean is None else mean,
                           std=self.std if std is None else std, workers=self.workers)

    def subset(self, positions: np.ndarray) -> ImageStream:
        """The images at ``positions`` of this stream (same transforms and normalisation)."""
        return self._derive(rows=self.rows[np.asarray(positions, np.int64)])

    def normalized(self, mean: Sequence[float], std: Sequence[float]) -> ImageStream:
        return self._derive(mean=mean, std=std)

    @property
    def augments(self) -> bool:
        """Whether training batches are randomly transformed (so differ from ``x[idx]``)."""
        return self.photo is not None

    # -- decoding -----------------------------------------------------------------------------
    def _transforms(self) -> tuple[Callable, Callable]:
        if self._pipelines is None:
            if self.photo is not None:
                self._pipelines = photo_pipelines(self.photo)
            else:
                resize = _Resize(self.image_size)
                self._pipelines = (resize, resize)
        return self._pipelines

    def _workers(self, count: int) -> int:
        if self.workers is not None:
            return self.workers
        if count < WORKER_THRESHOLD:
            return 0
        return max(0, min(4, (os.cpu_count() or 1) - 1))

    def batches(self, position_batches: Iterable[np.ndarray], *, train: bool = False,
                total: int | None = None) -> Iterator[np.ndarray]:
        """Normalised float32 batches for each array of positions, in order, from one DataLoader.

        Args:
            position_batches: arrays of positions into this stream (one per batch).
            train: apply the random train transforms (photo preset); else the eval transform.
            total: images in all batches (picks the worker count), when known.
        """
        import torch.utils.data as tud

        batches = [self.rows[np.asarray(b, np.int64)].tolist() for b in position_batches]
        count = total if total is not None else sum(len(b) for b in batches)
        train_tf, eval_tf = self._transforms()
        dataset = _Decode(self.files, "L" if self.grayscale else "RGB",
                          train_tf if train else eval_tf)
        workers = self._workers(count)
        loader = tud.DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                                collate_fn=_collate, prefetch_factor=4 if workers else None)
        for rows, items in zip(batches, loader, strict=True):
            yield self._normalise(rows, items)

    def _normalise(self, rows: list[int], items: list) -> np.ndarray:
        out = np.empty((len(items), *self.image_shape), np.float32)
        for k, pixels in enumerate(items):
            if isinstance(pixels, str):
                raise DataError(pixels)
            if pixels.shape != self.image_shape:
                raise DataError(f"{self.files.name(rows[k])}: decoded to shape {pixels.shape} "
                                f"(C, H, W), expected {self.image_shape}")
            out[k] = pixels
        out /= np.float32(255.0)
        out -= self.mean.reshape(1, -1, 1, 1)
        out /= self.std.reshape(1, -1, 1, 1)
        return out

    def _gather(self, positions: np.ndarray, batch_size: int = 256) -> np.ndarray:
        out = np.empty((positions.shape[0], *self.image_shape), np.float32)
        chunks = [positions[i:i + batch_size] for i in range(0, positions.shape[0], batch_size)]
        start = 0
        for batch in self.batches(chunks, total=positions.shape[0]):
            out[start:start + batch.shape[0]] = batch
            start += batch.shape[0]
        return out

    # -- provenance ---------------------------------------------------------------------------
    def fingerprint(self, digest: Any) -> None:
        """Feed the split's identity to ``digest``: the source's identity of each image (a
        file's name, size and time) plus the transforms and normalisation."""
        meta = {"shape": list(self.image_shape), "grayscale": self.grayscale,
                "image_size": list(self.image_size) if self.image_size else None,
                "photo": asdict(self.photo) if self.photo else None,
                "mean": self.mean.tolist(), "std": self.std.tolist()}
        digest.update(repr(sorted(meta.items())).encode())
        self.files.fingerprint(self.rows, digest)


def stream_statistics(stream: ImageStream, samples: int, seed: int) -> tuple[list[float],
                                                                               list[float]]:
    """Per-channel mean/std of pixels in [0, 1] over a seeded sample of the stream's images
    (eval transform), accumulated per batch so memory stays one batch."""
    n = len(stream)
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(n, size=min(samples, n), replace=False))
    raw = stream.normalized([0.0] * stream.image_shape[0], [1.0] * stream.image_shape[0])
    total = np.zeros(stream.image_shape[0], np.float64)
    total_sq = np.zeros_like(total)
    count = 0
    chunks = [picks[i:i + 256] for i in range(0, picks.shape[0], 256)]
    for batch in raw.batches(chunks, total=picks.shape[0]):
        total += batch.sum(axis=(0, 2, 3), dtype=np.float64)
        total_sq += np.square(batch, dtype=np.float64).sum(axis=(0, 2, 3))
        count += batch.shape[0] * batch.shape[2] * batch.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
    std = np.where(std < 1e-12, 1.0, std)
    return [float(v) for v in mean], [float(v) for v in std]


#: Streamed test splits give parity checks (which hold their inputs in memory) this many images.
PARITY_SAMPLES = 512


def parity_sample(x: Any, *aligned: np.ndarray, limit: int = PARITY_SAMPLES) -> tuple:
    """``(x, *aligned)`` for a check that needs its inputs in memory: an array as is; a stream's
    first ``limit`` images decoded (the split is already shuffled), and the aligned arrays
    (labels, reference logits) cut to match, so memory does not grow with the split."""
    if not is_stream(x):
        return (x, *aligned)
    n = min(len(x), limit)
    return (x[:n], *(a[:n] for a in aligned))


def is_stream(x: Any) -> bool:
    """Whether a split's ``x`` is streamed (an :class:`ImageStream`) rather than an array."""
    return isinstance(x, ImageStream)
