"""Labelled texts from CSV/TSV/JSONL files or saved Hugging Face datasets: a seeded
stratified split, limits that say what they shrink, and tokenized batches.

Texts stay on disk (:mod:`edgecompress.text.sources`): a split holds row numbers and labels, a
batch reads its texts and tokenizes them when it is needed, with the teacher's tokenizer (the
student shares it), so memory does not grow with the corpus. Tokenizing per batch costs little
next to a forward pass (Hugging Face's fast tokenizers are Rust); it is done in the training
process rather than in DataLoader workers, because forking after the tokenizer has used its
thread pool makes the tokenizers library disable its parallelism or deadlock.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgecompress.data.checks import check_class_count, check_limits
from edgecompress.data.split import stratified_partition, stratified_split, stratified_subsample
from edgecompress.errors import DataError
from edgecompress.text.sources import (
    MemoryTexts,
    TextRows,
    TextScan,
    file_format,
    scan_delimited,
    scan_jsonl,
)

logger = logging.getLogger(__name__)

SPLIT_NAMES = {"train": "train", "validation": "val", "val": "val", "dev": "val", "test": "test"}
SPLITS = ("train", "val", "test")
READ_CHUNK = 1024


class TextView:
    """The texts of one split: row numbers into a source, read from disk on demand."""

    def __init__(self, source: TextRows, rows: np.ndarray) -> None:
        self.source, self.rows = source, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, positions: Any) -> list[str]:
        """The texts at ``positions`` (indices into this split), in that order."""
        return self.source.read(self.rows[np.asarray(positions, dtype=np.int64)])

    def chunks(self, size: int = READ_CHUNK) -> Iterator[list[str]]:
        """Every text of the split, ``size`` at a time (for tokenizer training)."""
        for start in range(0, len(self.rows), size):
            yield self.take(np.arange(start, min(start + size, len(self.rows))))


@dataclass
class TextSplit:
    """Texts (on disk) and integer labels of one split."""

    texts: TextView
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_texts(cls, texts: list[str], labels: Any) -> TextSplit:
        """A split of texts held in memory."""
        return cls(TextView(MemoryTexts(texts), np.arange(len(texts))),
                   np.asarray(labels, dtype=np.int64))


@dataclass
class TextBundle:
    """The three splits, the class names (index = label id), a fingerprint, and where the
    data came from (recorded in the report)."""

    name: str
    classes: list[str]
    train: TextSplit
    val: TextSplit
    test: TextSplit
    fingerprint: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def scan_texts(cfg: Any) -> TextScan:
    """The scan of ``cfg.path`` (a :class:`~edgecompress.text.recipe.TextDataConfig`).

    Raises:
        DataError: a missing file or column, a malformed row (its line is named).
        BackendUnavailable: a Hugging Face dataset without ``datasets`` installed.
    """
    path = Path(cfg.path)
    kind = file_format(path, cfg.format)
    if kind == "hf":
        from edgecompress.text.hfsource import scan_hf_texts

        return scan_hf_texts(path, cfg)
    if not path.is_file():
        raise DataError(f"data.path: file not found: {path}")
    scan = scan_jsonl(path, cfg) if kind == "jsonl" else scan_delimited(path, kind, cfg)
    if not len(scan.rows):
        raise DataError(f"{path}: no rows")
    return scan


def _given_roles(scan: TextScan, sel: np.ndarray, where: str, column: str | None
                 ) -> np.ndarray:
    """Each selected row's split role (0/1/2: train/val/test) from the data or
    ``split_column``."""
    codes = scan.splits.array()[sel]
    used = {scan.splits.values[c] for c in np.unique(codes)}
    unknown = sorted(v for v in used if v not in SPLIT_NAMES)
    if unknown:
        what = f"split_column {column!r}" if column else "the splits"
        raise DataError(f"{where}: {what} has values {unknown}; expected {sorted(SPLIT_NAMES)}")
    role_of_code = np.array([SPLITS.index(SPLIT_NAMES.get(v, "train"))
                             for v in scan.splits.values], dtype=np.int8)
    return role_of_code[codes]


def _split(labels: np.ndarray, roles: np.ndarray | None, cfg: Any, seed: int
           ) -> tuple[dict[str, np.ndarray], list[str]]:
    """Positions of train/val/test. Given splits are kept; a missing val (or test) split is
    carved from train with its fraction, stratified and seeded."""
    if roles is None:
        train, val, test = stratified_split(labels, cfg.val_fraction, cfg.test_fraction, seed)
        return {"train": train, "val": val, "test": test}, []
    parts = {role: np.flatnonzero(roles == k) for k, role in enumerate(SPLITS)}
    given = [role for role in SPLITS if len(parts[role])]
    pool = parts["train"]
    carve = [(role, fraction) for role, fraction in (("test", cfg.test_fraction),
                                                     ("val", cfg.val_fraction))
             if not len(parts[role])]
    if carve:
        n = len(labels)
        sizes = [min(int(np.floor(n * fraction + 0.5)), len(pool) // 2) for _, fraction in carve]
        pieces = stratified_partition(labels[pool], sizes, seed)
        for (role, _), piece in zip(carve, pieces, strict=False):
            parts[role] = pool[piece]
        parts["train"] = pool[pieces[-1]]
    return parts, given


def _limit(parts: dict[str, np.ndarray], labels: np.ndarray, cfg: Any, seed: int
           ) -> dict[str, Any]:
    """Apply ``train_limit`` (train + val together) and ``eval_limit`` (test) in place; what was
    applied, for the report."""
    applied: dict[str, Any] = {}
    pool = np.concatenate([parts["train"], parts["val"]])
    if cfg.train_limit is not None and cfg.train_limit < len(pool):
        keep = np.zeros(len(labels), dtype=bool)
        keep[pool[stratified_subsample(labels[pool], cfg.train_limit, seed)]] = True
        for role in ("train", "val"):
            parts[role] = parts[role][keep[parts[role]]]
        applied["train_limit"] = {"from": int(len(pool)), "to": int(cfg.train_limit)}
    if cfg.eval_limit is not None and cfg.eval_limit < len(parts["test"]):
        test = parts["test"]
        parts["test"] = test[stratified_subsample(labels[test], cfg.eval_limit, seed + 1)]
        applied["eval_limit"] = {"from": int(len(test)), "to": int(cfg.eval_limit)}
    return applied


def load_text_dataset(cfg: Any, seed: int) -> TextBundle:
    """Scan ``cfg`` (a :class:`~edgecompress.text.recipe.TextDataConfig`) and split it.

    Raises:
        DataError: a missing file or column (the columns found are listed), an empty text, a
            label outside ``labels``, fewer than two classes, too few rows per split.
    """
    scan = scan_texts(cfg)
    where = scan.rows.where
    classes = list(cfg.labels) if cfg.labels else (scan.label_order
                                                  or sorted(set(scan.labels.values)))
    index = {c: i for i, c in enumerate(classes)}
    class_of_code = np.array([index.get(v, -1) for v in scan.labels.values], dtype=np.int64)
    labels_all = class_of_code[scan.labels.array()]
    sel = np.flatnonzero(labels_all >= 0)
    if scan.empty_count:
        raise DataError(f"{where}: {scan.empty_count} empty {cfg.text_column!r} text(s), at "
                        f"{', '.join(scan.empty)}")
    check_class_count(len(set(labels_all[sel].tolist())), f"{where} ({cfg.label_column!r})")
    check_limits({"limit": cfg.limit, "train_limit": cfg.train_limit,
                  "eval_limit": cfg.eval_limit}, len(classes), where)
    info: dict[str, Any] = {"source": scan.kind, "path": str(cfg.path),
                            "rows": int(len(labels_all)),
                            "streamed": True}
    if cfg.limit is not None and cfg.limit < len(sel):
        info["limit"] = {"from": int(len(sel)), "to": int(cfg.limit)}
        sel = np.sort(sel[stratified_subsample(labels_all[sel], cfg.limit, seed)])
    labels = labels_all[sel]
    roles = _given_roles(scan, sel, where, cfg.split_column) if scan.splits is not None else None
    parts, given = _split(labels, roles, cfg, seed)
    info["given_splits"] = given
    info.update(_limit(parts, labels, cfg, seed))
    for role, name in zip(SPLITS, ("train", "validation", "test"), strict=True):
        parts[role] = np.sort(parts[role])
        if len(parts[role]) < 2:
            raise DataError(f"{where}: the {name} split has {len(parts[role])} rows; need more "
                            f"data")
    digest = hashlib.sha256(f"{scan.digest}|{classes}".encode())
    for role in SPLITS:
        digest.update(role.encode() + sel[parts[role]].tobytes())
    splits = {role: TextSplit(TextView(scan.rows, sel[parts[role]]), labels[parts[role]])
              for role in SPLITS}
    name = cfg.name or Path(cfg.path).name
    return TextBundle(name=name, classes=classes, fingerprint=digest.hexdigest(), info=info,
                      **splits)


class Encoded:
    """A split's labels, and its token ids made per request (special tokens added, truncated
    to ``max_length``): nothing is tokenized ahead, so memory does not grow with the split."""

    def __init__(self, tokenizer: Any, split: TextSplit, max_length: int) -> None:
        self.tokenizer, self.split, self.max_length = tokenizer, split, max_length
        self.labels = split.labels

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, positions: Any) -> list[list[int]]:
        """Token ids of the texts at ``positions``."""
        texts = self.split.texts.take(positions)
        if not texts:
            return []
        out = self.tokenizer(texts, truncation=True, max_length=self.max_length,
                             return_attention_mask=False, return_token_type_ids=False)
        return [list(x) for x in out["input_ids"]]

    def head(self, n: int) -> list[list[int]]:
        """Token ids of the first ``n`` texts."""
        return self.take(np.arange(min(n, len(self))))


def encode(tokenizer: Any, split: TextSplit, max_length: int) -> Encoded:
    """``split`` with its tokenization (done per batch, on demand)."""
    return Encoded(tokenizer, split, max_length)


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
            seed: int = 0, rank: int = 0, world_size: int = 1):
    """Yield ``(input_ids, attention_mask, labels)``; shuffled batches for training.

    Under torchrun (``world_size`` > 1) every rank draws the same seeded permutation, cut to a
    multiple of ``world_size``, and takes every ``world_size``-th text from ``rank`` on: the
    ranks' shards are disjoint and equally long (so their DDP steps pair up).
    """
    order = np.random.default_rng(seed).permutation(len(data)) if shuffle \
        else np.arange(len(data))
    if world_size > 1:
        order = order[:len(order) // world_size * world_size][rank::world_size]
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        input_ids, mask = collate(data.take(idx), pad_id)
        yield input_ids, mask, torch.as_tensor(data.labels[idx])


def fixed_length_input(data: Encoded, seq_len: int, batch_size: int, cls_id: int, sep_id: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """A realistic timing batch: real token ids of consecutive texts, exactly ``seq_len`` long,
    no padding (so latency is measured at that length, not on a short padded text)."""
    need = (seq_len - 2) * batch_size
    body: list[int] = []
    for start in range(0, len(data), 64):
        if len(body) >= need:
            break
        body += [t for ids in data.take(np.arange(start, min(start + 64, len(data))))
                 for t in ids[1:-1]]
    if not body:
        raise DataError("no tokens in the test split to build a timing input")
    body = (body * (need // len(body) + 1))[:need]
    rows = [[cls_id, *body[i * (seq_len - 2):(i + 1) * (seq_len - 2)], sep_id]
            for i in range(batch_size)]
    ids = np.asarray(rows, dtype=np.int64)
    return ids, np.ones_like(ids)
