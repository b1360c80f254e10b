"""Labelled texts from CSV/TSV/JSONL, a seeded stratified split, and tokenized batches.

Texts stay strings until a tokenizer (the teacher's) is known; the student shares the teacher's
tokenizer, so one tokenization serves every model of a run.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgecompress.errors import DataError

logger = logging.getLogger(__name__)

_SPLIT_NAMES = {"train": "train", "validation": "val", "val": "val", "dev": "val", "test": "test"}


@dataclass
class TextSplit:
    """Texts and integer labels of one split."""

    texts: list[str]
    labels: np.ndarray


@dataclass
class TextBundle:
    """The three splits, the class names (index = label id) and a content fingerprint."""

    name: str
    classes: list[str]
    train: TextSplit
    val: TextSplit
    test: TextSplit
    fingerprint: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".tab"):
        return "tsv"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    return "csv"


def read_rows(path: Path, fmt: str = "auto") -> list[dict[str, Any]]:
    """All rows of a CSV/TSV (header line) or JSONL file as dicts.

    Raises:
        DataError: missing or unreadable file, a bad JSON line (its number is named).
    """
    if not path.is_file():
        raise DataError(f"data.path: file not found: {path}")
    kind = _format(path, fmt)
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            if kind == "jsonl":
                rows = []
                for lineno, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except ValueError as err:
                            raise DataError(f"{path}:{lineno}: not a JSON object: {err}") from None
                return rows
            return list(csv.DictReader(fh, delimiter="\t" if kind == "tsv" else ","))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: unreadable as {kind}: {err}") from None


def _stratified_split(labels: np.ndarray, fractions: tuple[float, float], seed: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train/val/test, each class split in the same proportions."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_test = max(1, round(len(idx) * fractions[1]))
        n_val = max(1, round(len(idx) * fractions[0]))
        parts[2] += idx[:n_test].tolist()
        parts[1] += idx[n_test:n_test + n_val].tolist()
        parts[0] += idx[n_test + n_val:].tolist()
    return tuple(np.array(sorted(p), dtype=np.int64) for p in parts)  # type: ignore[return-value]


def load_text_dataset(cfg: Any, seed: int) -> TextBundle:
    """Load ``cfg`` (a :class:`~edgecompress.text.recipe.TextDataConfig`) and split it.

    Raises:
        DataError: a missing column (the columns found are listed), an empty text, a label
            outside ``labels``, fewer than two classes or too few rows per split.
    """
    path = Path(cfg.path)
    rows = read_rows(path, cfg.format)
    if not rows:
        raise DataError(f"{path}: no rows")
    for key in filter(None, (cfg.text_column, cfg.label_column, cfg.split_column)):
        if key not in rows[0]:
            raise DataError(f"{path}: column {key!r} not found (data.text_column/label_column/"
                            f"split_column); columns: {', '.join(map(str, rows[0]))}")
    texts = [str(r[cfg.text_column] or "").strip() for r in rows]
    raw_labels = [str(r[cfg.label_column]).strip() for r in rows]
    keep = np.ones(len(rows), dtype=bool)
    classes = list(cfg.labels) if cfg.labels else sorted(set(raw_labels))
    if cfg.labels:
        keep &= np.array([lab in set(classes) for lab in raw_labels])
    missing = [str(i + 2) for i, t in enumerate(texts) if keep[i] and not t]
    if missing:
        raise DataError(f"{path}: empty {cfg.text_column!r} in rows {', '.join(missing[:5])}")
    if len(classes) < 2:
        raise DataError(f"{path}: need at least 2 classes in {cfg.label_column!r}, got {classes}")
    index = {c: i for i, c in enumerate(classes)}
    sel = np.flatnonzero(keep)
    texts = [texts[i] for i in sel]
    labels = np.array([index[raw_labels[i]] for i in sel], dtype=np.int64)
    splits_raw = [str(rows[i][cfg.split_column]).strip().lower() for i in sel] \
        if cfg.split_column else None
    if cfg.limit is not None and cfg.limit < len(texts):
        rng = np.random.default_rng(seed)
        chosen = np.sort(np.concatenate([
            rng.permutation(np.flatnonzero(labels == c))[:max(1, round(
                cfg.limit * (labels == c).mean()))] for c in range(len(classes))]))
        texts, labels = [texts[i] for i in chosen], labels[chosen]
        splits_raw = [splits_raw[i] for i in chosen] if splits_raw else None
    if splits_raw is not None:
        unknown = sorted({s for s in splits_raw if s not in _SPLIT_NAMES})
        if unknown:
            raise DataError(f"{path}: split_column {cfg.split_column!r} has values {unknown}; "
                            f"expected {sorted(_SPLIT_NAMES)}")
        mapped = np.array([_SPLIT_NAMES[s] for s in splits_raw])
        parts = tuple(np.flatnonzero(mapped == k) for k in ("train", "val", "test"))
    else:
        parts = _stratified_split(labels, (cfg.val_fraction, cfg.test_fraction), seed)
    for name, idx in zip(("train", "validation", "test"), parts, strict=True):
        if len(idx) < 2:
            raise DataError(f"{path}: the {name} split has {len(idx)} rows; need more data")
    digest = hashlib.sha256()
    for t, y in zip(texts, labels, strict=True):
        digest.update(f"{y}\t{t}\n".encode())
    splits = [TextSplit([texts[i] for i in idx], labels[idx]) for idx in parts]
    return TextBundle(name=path.name, classes=classes, train=splits[0], val=splits[1],
                      test=splits[2], fingerprint=digest.hexdigest())


@dataclass
class Encoded:
    """Token ids (unpadded, one list per text) and labels."""

    ids: list[list[int]]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def encode(tokenizer: Any, split: TextSplit, max_length: int) -> Encoded:
    """Tokenize once (special tokens added, truncated to ``max_length``)."""
    out = tokenizer(split.texts, truncation=True, max_length=max_length,
                    return_attention_mask=False, return_token_type_ids=False)
    return Encoded(ids=[list(x) for x in out["input_ids"]], labels=split.labels)


def collate(ids: list[list[int]], pad_id: int, length: int | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a batch to its longest text (or ``length``): ``(input_ids, attention_mask)``, int64."""
    width = length or max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        seq = seq[:width]
        input_ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, :len(seq)] = 1
    return input_ids, mask


def batches(data: Encoded, batch_size: int, pad_id: int, *, shuffle: bool = False,
            seed: int = 0):
    """Yield ``(input_ids, attention_mask, labels)``; shuffled batches for training."""
    order = np.random.default_rng(seed).permutation(len(data)) if shuffle \
        else np.arange(len(data))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        input_ids, mask = collate([data.ids[i] for i in idx], pad_id)
        yield input_ids, mask, torch.as_tensor(data.labels[idx])


def fixed_length_input(data: Encoded, seq_len: int, batch_size: int, cls_id: int, sep_id: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """A realistic timing batch: real token ids of consecutive texts, exactly ``seq_len`` long,
    no padding (so latency is measured at that length, not on a short padded text)."""
    body = [t for ids in data.ids for t in ids[1:-1]]
    need = (seq_len - 2) * batch_size
    if not body:
        raise DataError("no tokens in the test split to build a timing input")
    body = (body * (need // len(body) + 1))[:need]
    rows = [[cls_id, *body[i * (seq_len - 2):(i + 1) * (seq_len - 2)], sep_id]
            for i in range(batch_size)]
    ids = np.asarray(rows, dtype=np.int64)
    return ids, np.ones_like(ids)
