"""An index file of images: a CSV or JSON list of ``path,label[,split]`` rows.

The alternative to class folders when the images live elsewhere or the split is given: paths
are relative to the index file's directory (absolute paths work too); ``label`` is a class name
or an integer; the optional ``split`` column (``train`` / ``test``) gives the test split
explicitly, otherwise it is carved here like any other source.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from edgecompress.data.checks import check_class_count, encode_labels
from edgecompress.data.imagefolder import IMAGE_EXTENSIONS, FolderListing, image_shape
from edgecompress.errors import DataError

INDEX_SUFFIXES = (".csv", ".json")
SPLITS = ("train", "test")


def _rows(index: Path) -> list[tuple[str, dict]]:
    """(where, row) pairs: ``where`` names the file and the line (CSV) or entry (JSON)."""
    try:
        text = index.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read image index {index}: {exc}") from exc
    if index.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        missing = {"path", "label"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{index}: the header needs columns path and label (and optionally "
                            f"split); it has {reader.fieldnames}")
        return [(f"{index}, line {n + 2}", row) for n, row in enumerate(reader)]
    try:
        entries = json.loads(text)
    except ValueError as exc:
        raise DataError(f"{index}: not valid JSON: {exc}") from exc
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise DataError(f"{index}: expected a JSON list of objects with path and label")
    return [(f"{index}, entry {n}", e) for n, e in enumerate(entries)]


def scan_image_index(index: Path, image_size: tuple[int, int] | None,
                     grayscale: bool) -> tuple[FolderListing, FolderListing | None, dict | None]:
    """Read the index; returns the train listing, the given test listing (or None) and the
    label mapping (integer labels not 0..K-1, else None).

    Raises:
        DataError: naming the index file and line/entry of a missing column, file or bad split.
    """
    if not index.is_file():
        raise DataError(f"image index {index} does not exist")
    base = index.parent
    parts: dict[str, tuple[list[Path], list[str], list[str]]] = {s: ([], [], []) for s in SPLITS}
    for where, row in _rows(index):
        path, label = row.get("path"), row.get("label")
        if path in (None, "") or label in (None, ""):
            raise DataError(f"{where}: needs a path and a label, got {row}")
        split = str(row.get("split") or "train").strip().lower()
        if split not in SPLITS:
            raise DataError(f"{where}: split {split!r} is not one of {list(SPLITS)}")
        file = (base / str(path)).resolve()
        if not file.is_file():
            raise DataError(f"{where}: image {file} does not exist")
        if file.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(f"{where}: {file} is not an image ({', '.join(IMAGE_EXTENSIONS)})")
        files, labels, wheres = parts[split]
        files.append(file)
        labels.append(str(label).strip())
        wheres.append(where)
    if not parts["train"][0]:
        raise DataError(f"{index}: no training images listed")
    given_test = bool(parts["test"][0])
    as_int = all(lbl.lstrip("-").isdigit() for s in SPLITS for lbl in parts[s][1])
    mapping = None
    if as_int:
        encoded, classes, mapping = encode_labels(
            [(np.asarray([int(v) for v in parts[s][1]], np.int64), f"{index} ({s} rows)")
             for s in SPLITS if parts[s][0]])
    else:
        classes = sorted(set(parts["train"][1]))
        check_class_count(len(classes), str(index))
        lookup = {c: k for k, c in enumerate(classes)}
        for lbl, where in zip(parts["test"][1], parts["test"][2], strict=True):
            if lbl not in lookup:
                raise DataError(f"{where}: test label {lbl!r} does not occur in the training "
                                f"rows (their labels: {classes[:20]})")
        encoded = [np.asarray([lookup[v] for v in parts[s][1]], np.int64)
                   for s in SPLITS if parts[s][0]]
    shape = image_shape(parts["train"][0] + parts["test"][0], image_size, grayscale)
    train = FolderListing(index, parts["train"][0], encoded[0], classes, shape)
    test = (FolderListing(index, parts["test"][0], encoded[1], classes, shape)
            if given_test else None)
    return train, test, mapping
