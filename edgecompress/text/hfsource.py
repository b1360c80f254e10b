"""Hugging Face datasets saved to local disk (``save_to_disk``) as a text source.

``datasets.load_from_disk`` memory-maps the arrow files, so the scan reads the label (and split)
columns in chunks and a batch's texts are fetched by row number when it is needed: nothing of
the corpus is held in Python objects. Nothing is downloaded (``HF_DATASETS_OFFLINE=1``).

Layouts: a ``DatasetDict`` whose splits are named ``train`` and optionally
``validation``/``val``/``dev`` and ``test`` (the splits given by the data; other splits, such
as IMDB's ``unsupervised``, are skipped and logged), or a single ``Dataset`` split here (or by
``data.split_column``). The text column is a string feature; the label column a ``ClassLabel``
(its names become the classes, in its order), integers or strings.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.data.hfdisk import datasets_module, find_column, load_saved
from edgecompress.errors import DataError
from edgecompress.text.sources import Codes, TextScan, clean_text

logger = logging.getLogger(__name__)

SPLIT_ROLES = {"train": "train", "validation": "val", "val": "val", "dev": "val",
               "test": "test"}
CHUNK = 4096


class HFTexts:
    """The text column of one or more splits of a saved dataset, as one row-numbered source.

    Opens the dataset on first use, so a copy sent to another process opens its own mapping.
    """

    def __init__(self, path: Path, splits: list[str | None], lengths: list[int],
                 column: str) -> None:
        self.path, self.splits, self.column = path, splits, column
        self.starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.where = str(path)
        self._parts: list[Any] | None = None

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_parts": None}

    def _open(self) -> list[Any]:
        if self._parts is None:
            loaded = load_saved(self.path)
            self._parts = [(loaded[s] if s is not None else loaded).select_columns([self.column])
                           for s in self.splits]
        return self._parts

    def read(self, rows: np.ndarray) -> list[str]:
        rows = np.asarray(rows, dtype=np.int64)
        part = np.searchsorted(self.starts, rows, side="right") - 1
        out: list[str] = [""] * len(rows)
        tables = self._open()
        for p in np.unique(part):
            sel = np.flatnonzero(part == p)
            values = tables[int(p)][(rows[sel] - self.starts[p]).tolist()][self.column]
            for k, value in zip(sel.tolist(), values, strict=True):
                out[k] = clean_text(value)
        return out


def _parts(loaded: Any, path: Path) -> list[tuple[str | None, Any]]:
    datasets = datasets_module()
    if not isinstance(loaded, datasets.DatasetDict):
        return [(None, loaded)]
    parts = [(name, loaded[name]) for name in loaded if name.lower() in SPLIT_ROLES]
    skipped = [name for name in loaded if name.lower() not in SPLIT_ROLES]
    if skipped:
        logger.info("%s: splits %s skipped (only %s are read)", path, skipped,
                    sorted(SPLIT_ROLES))
    if not any(SPLIT_ROLES[name.lower()] == "train" for name, _ in parts):
        raise DataError(f"{path}: a DatasetDict needs a 'train' split; it has {list(loaded)}")
    return parts


def scan_hf_texts(path: Path, cfg: Any) -> TextScan:
    """One chunked pass over the label (and split) columns, and the texts' emptiness.

    Raises:
        DataError: not a saved dataset, no train split, a missing or non-text column, a label
            outside its ``ClassLabel``.
        BackendUnavailable: ``datasets`` is not installed.
    """
    datasets = datasets_module()
    loaded = load_saved(path)
    parts = _parts(loaded, path)
    given = parts[0][0] is not None
    if given and cfg.split_column:
        raise DataError(f"{path}: data.split_column is for a single Dataset; this DatasetDict "
                        f"gives its splits ({', '.join(name for name, _ in parts)})")
    first = parts[0][1]
    where = str(path)
    text_col = find_column(first, cfg.text_column, (), "text", where)
    label_col = find_column(first, cfg.label_column, (), "label", where)
    columns = [text_col, label_col]
    if cfg.split_column:
        columns.append(find_column(first, cfg.split_column, (), "split", where))
    feature = first.features[text_col]
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        raise DataError(f"{where}: column {text_col!r} is {feature!r}, not a string column "
                        f"(data.text_column)")
    label_feature = first.features[label_col]
    names = list(label_feature.names) if isinstance(label_feature, datasets.ClassLabel) else None
    labels, splits = Codes(), Codes() if (given or cfg.split_column) else None
    digest = hashlib.sha256(f"hf|{text_col}|{label_col}|{cfg.split_column}".encode())
    scan = TextScan(HFTexts(path, [name for name, _ in parts], [len(p) for _, p in parts],
                            text_col), labels, splits, "", label_order=names, kind="hf",
                    given_splits=given)
    for name, part in parts:
        part_where = f"{path}[{name}]" if name else where
        missing = [c for c in columns if c not in part.column_names]
        if missing:
            raise DataError(f"{part_where}: no column {missing[0]!r}; columns: "
                            f"{part.column_names}")
        digest.update(f"|{name}:{getattr(part, '_fingerprint', '') or ''}:{len(part)}".encode())
        row = 0
        for chunk in part.select_columns(columns).iter(batch_size=CHUNK):
            for k, (text, label) in enumerate(zip(chunk[text_col], chunk[label_col],
                                                  strict=True)):
                if not clean_text(text):
                    scan.note_empty(f"{part_where} row {row + k}")
                if names is not None:
                    if not isinstance(label, int) or not 0 <= label < len(names):
                        raise DataError(f"{part_where} row {row + k}: label {label!r} is not one "
                                        f"of the ClassLabel's {len(names)} classes (an "
                                        f"unlabelled split? keep it out of the DatasetDict)")
                    label = names[label]
                labels.add(clean_text(label))
            if splits is not None:
                values = [name] * len(chunk[text_col]) if given else chunk[columns[2]]
                for value in values:
                    splits.add(clean_text(value).lower())
            row += len(chunk[text_col])
    if not len(scan.rows):
        raise DataError(f"{path}: no rows")
    scan.digest = digest.hexdigest()
    return scan
