"""Array sources (idx, npz, digits) streamed like image folders: per-batch conversion from the
array's own dtype, so a memory-mapped idx file or a uint8 npz array is never copied whole."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from edgecompress.data.stream import FileImages, ImageStream
from edgecompress.errors import DataError


class ArrayStream(ImageStream):
    """An in-memory or memory-mapped array source (idx, npz, digits) streamed like a folder.

    The array keeps its own dtype (uint8 stays 1 byte per pixel; an uncompressed idx file is
    memory-mapped, not read), and each batch is converted when it is read: scaled to [0, 1]
    (uint8), converted to grayscale and/or resized (as the in-memory path does to the whole
    array), then normalised. No worker processes: the work per batch is a few array ops.
    """

    def __init__(self, raw: np.ndarray, rows: np.ndarray, *, where: str,
                 grayscale: bool = False, image_size: tuple[int, int] | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        channels = 1 if grayscale else int(raw.shape[1])
        height, width = image_size if image_size is not None else raw.shape[2:]
        super().__init__(FileImages([]), rows, (channels, int(height), int(width)),
                         grayscale=grayscale, image_size=image_size, mean=mean, std=std)
        self.raw, self.where = raw, where

    def _derive(self, rows: np.ndarray | None = None, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None) -> ArrayStream:
        return ArrayStream(self.raw, self.rows if rows is None else rows, where=self.where,
                           grayscale=self.grayscale, image_size=self.image_size,
                           mean=self.mean if mean is None else mean,
                           std=self.std if std is None else std)

    @property
    def augments(self) -> bool:
        return False

    def batches(self, position_batches: Iterable[np.ndarray], *, train: bool = False,
                total: int | None = None) -> Iterator[np.ndarray]:
        from edgecompress.data.checks import check_finite

        for positions in position_batches:
            rows = self.rows[np.asarray(positions, np.int64)]
            x = np.asarray(self.raw[np.sort(rows)] if rows.size else self.raw[:0])
            x = x[np.argsort(np.argsort(rows))] if rows.size else x  # back to the asked order
            out = np.ascontiguousarray(x, dtype=np.float32)
            if x.dtype == np.uint8:
                out /= np.float32(255.0)
            check_finite(out, self.where)
            out = adapt_pixels(out, self.image_size, self.grayscale, self.where)
            out -= self.mean.reshape(1, -1, 1, 1)
            out /= self.std.reshape(1, -1, 1, 1)
            yield out

    def fingerprint(self, digest: Any) -> None:
        meta = {"shape": list(self.image_shape), "grayscale": self.grayscale,
                "image_size": list(self.image_size) if self.image_size else None,
                "mean": self.mean.tolist(), "std": self.std.tolist(), "dtype": str(self.raw.dtype)}
        digest.update(repr(sorted(meta.items())).encode())
        for start in range(0, len(self.rows), 4096):
            chunk = self.rows[start:start + 4096]
            digest.update(np.ascontiguousarray(self.raw[np.sort(chunk)]).tobytes())
            digest.update(chunk.tobytes())


def adapt_pixels(x: np.ndarray, image_size: tuple[int, int] | None, grayscale: bool,
                 where: str) -> np.ndarray:
    """Apply ``grayscale`` (ITU-R 601 luma, as Pillow's "L") and ``image_size`` (bilinear,
    antialiased) to float32 (N, C, H, W) pixels."""
    if grayscale and x.shape[1] == 3:
        weights = np.asarray([0.299, 0.587, 0.114], dtype=np.float32).reshape(1, 3, 1, 1)
        x = (x * weights).sum(axis=1, keepdims=True, dtype=np.float32)
    elif grayscale and x.shape[1] != 1:
        raise DataError(f"{where}: grayscale=True needs 1 or 3 channels, images have shape "
                        f"{x.shape[1:]} (C, H, W)")
    if image_size is not None and tuple(x.shape[2:]) != tuple(image_size) and len(x):
        import torch
        import torch.nn.functional as F

        resized = F.interpolate(torch.from_numpy(np.ascontiguousarray(x)), size=tuple(image_size),
                                mode="bilinear", align_corners=False, antialias=True)
        x = resized.numpy()
    return np.ascontiguousarray(x, dtype=np.float32)
