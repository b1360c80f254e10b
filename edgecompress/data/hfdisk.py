"""Hugging Face ``datasets`` saved to local disk (``save_to_disk``) as an image source.

The arrow files are memory-mapped by ``datasets.load_from_disk`` and images are decoded one row
at a time (from the stored encoded bytes) when a batch needs them, so a dataset of any size is
read like an image folder: labels up front, pixels per batch in DataLoader workers. Nothing is
downloaded (``HF_DATASETS_OFFLINE=1`` is set before the import).

Layouts: a ``DatasetDict`` directory with a ``train`` split (and optionally ``test``, used as the
given test split), or a single ``Dataset`` directory that is split here. The image column is an
``Image`` feature (``image`` or ``img`` by default); the label column (``label`` or ``labels``)
is a ``ClassLabel`` (its names become the class names) or plain integers / strings.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.data.checks import check_class_count, encode_labels
from edgecompress.errors import BackendUnavailable, DataError

IMAGE_COLUMNS = ("image", "img")
LABEL_COLUMNS = ("label", "labels")


def datasets_module():
    """``datasets``, offline (exit 3 with the install line when it is missing)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import datasets
    except ImportError as exc:
        raise BackendUnavailable("source 'hf' needs Hugging Face datasets: pip install "
                                 "'edgecompress[hf]'") from exc
    return datasets


class HFImages:
    """One split's image column as an image source (``open(i)``, ``name(i)``, fingerprint).

    Holds the path, split and column and opens the memory-mapped dataset on first use, so a
    DataLoader worker forked before that opens its own mapping.
    """

    def __init__(self, path: Path, split: str | None, column: str, length: int,
                 fingerprint: str) -> None:
        self.path, self.split, self.column = path, split, column
        self.length, self.dataset_fingerprint = length, fingerprint
        self._table = None

    def __len__(self) -> int:
        return self.length

    def _rows(self):
        if self._table is None:
            datasets = datasets_module()
            loaded = datasets.load_from_disk(str(self.path))
            split = loaded[self.split] if self.split is not None else loaded
            self._table = split.cast_column(self.column, datasets.Image(decode=False))
        return self._table

    def open(self, i: int):
        from PIL import Image

        cell = self._rows()[int(i)][self.column]
        data = cell.get("bytes") if isinstance(cell, dict) else None
        if data is None and isinstance(cell, dict) and cell.get("path"):
            return Image.open(cell["path"])
        if data is None:
            raise OSError(f"row {i} has no image bytes")
        return Image.open(io.BytesIO(data))

    def name(self, i: int) -> str:
        where = f"{self.path}[{self.split}]" if self.split else str(self.path)
        return f"{where} row {int(i)} column {self.column!r}"

    def fingerprint(self, rows: np.ndarray, digest: Any) -> None:
        """The dataset's own fingerprint (``datasets`` changes it with the content) + rows."""
        digest.update(f"hf|{self.path}|{self.split}|{self.dataset_fingerprint}|".encode())
        digest.update(hashlib.sha256(np.ascontiguousarray(rows).tobytes()).digest())


def load_saved(path: Path) -> Any:
    """The ``Dataset`` or ``DatasetDict`` saved in ``path`` (memory-mapped).

    Raises:
        DataError: not a directory, or not one written by ``save_to_disk``.
    """
    datasets = datasets_module()
    if not path.is_dir():
        raise DataError(f"Hugging Face dataset {path} is not a directory (expected the folder "
                        f"written by Dataset.save_to_disk / DatasetDict.save_to_disk)")
    try:
        return datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise DataError(f"cannot read Hugging Face dataset {path}: {exc}") from exc


def find_column(split: Any, wanted: str | None, defaults: tuple[str, ...], what: str,
            where: str) -> str:
    names = list(split.column_names)
    if wanted is not None:
        if wanted not in names:
            raise DataError(f"{where}: no {what} column {wanted!r}; columns: {names}")
        return wanted
    for name in defaults:
        if name in names:
            return name
    raise DataError(f"{where}: no {what} column (looked for {list(defaults)}); columns: "
                    f"{names}; name it with data.{what}_column")


def scan_hf_dataset(path: Path, image_column: str | None, label_column: str | None
                    ) -> dict[str, Any]:
    """Open a ``save_to_disk`` directory: per split (``train`` and optional ``test``) the image
    source and the labels; plus the class names and label mapping.

    Raises:
        DataError: not a saved dataset, no train split, missing/odd columns, bad labels.
        BackendUnavailable: ``datasets`` is not installed.
    """
    datasets = datasets_module()
    loaded = load_saved(path)
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(f"{path}: a DatasetDict needs a 'train' split; it has "
                            f"{list(loaded)}")
        splits = {"train": "train", **({"test": "test"} if "test" in loaded else {})}
        parts = {role: loaded[name] for role, name in splits.items()}
    else:
        splits, parts = {"train": None}, {"train": loaded}
    where = str(path)
    train = parts["train"]
    image_col = find_column(train, image_column, IMAGE_COLUMNS, "image", where)
    label_col = find_column(train, label_column, LABEL_COLUMNS, "label", where)
    feature = train.features[image_col]
    if not isinstance(feature, datasets.Image):
        raise DataError(f"{where}: column {image_col!r} is {type(feature).__name__}, not an "
                        f"Image feature")
    label_feature = train.features[label_col]
    out: dict[str, Any] = {"sources": {}, "labels": {}}
    raw_labels = []
    for role, part in parts.items():
        for col in (image_col, label_col):
            if col not in part.column_names:
                raise DataError(f"{where}[{splits[role]}]: no column {col!r}")
        label_where = f"{where}[{splits[role] or 'all'}][{label_col!r}]"
        raw_labels.append((np.asarray(part[label_col]), label_where))
        out["sources"][role] = HFImages(path, splits[role], image_col, len(part),
                                        getattr(part, "_fingerprint", "") or "")
    if isinstance(label_feature, datasets.ClassLabel):
        names = list(label_feature.names)
        labels = [arr.astype(np.int64) for arr, _ in raw_labels]
        for arr, (_, label_where) in zip(labels, raw_labels, strict=True):
            bad = np.flatnonzero((arr < 0) | (arr >= len(names)))
            if bad.size:
                raise DataError(f"{label_where}: row {int(bad[0])} has label {int(arr[bad[0]])}, "
                                f"outside the ClassLabel's {len(names)} names")
        mapping = None
    elif all(arr.dtype.kind in "USO" for arr, _ in raw_labels):  # class names as strings
        names = sorted({str(v) for arr, _ in raw_labels for v in arr.tolist()})
        index = {name: k for k, name in enumerate(names)}
        labels = [np.asarray([index[str(v)] for v in arr.tolist()], np.int64)
                  for arr, _ in raw_labels]
        mapping = None
    else:
        labels, names, mapping = encode_labels(raw_labels)
    check_class_count(len(names), where)
    out["labels"] = dict(zip(parts, labels, strict=True))
    out.update(class_names=[str(n) for n in names], label_mapping=mapping,
               label_source=raw_labels[0][1],
               test_source=raw_labels[1][1] if len(raw_labels) > 1 else "")
    return out


def image_shape_of(source: HFImages, grayscale: bool) -> tuple[int, int, int]:
    """(C, H, W) when every image has the same size (headers only), else a DataError."""
    first = None
    for i in range(len(source)):
        try:
            with source.open(i) as img:
                size = img.size
        except OSError as exc:
            raise DataError(f"cannot read image {source.name(i)}: {exc}") from exc
        if first is None:
            first = size
        elif size != first:
            raise DataError(f"images differ in size: {source.name(0)} is {first[0]}x{first[1]} "
                            f"but {source.name(i)} is {size[0]}x{size[1]} (width x height); "
                            f"set data.image_size or data.transforms")
    return (1 if grayscale else 3, int(first[1]), int(first[0]))
