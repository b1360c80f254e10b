"""Labelled texts kept on disk: CSV/TSV/JSONL files read back by byte offset.

Why not read the file into lists: a corpus of a few million reviews is gigabytes as Python
strings and several times that as lists of token ids. One streaming pass over the file records
per row only its byte offset, its label and its split (about 16 bytes a row) and hashes the
bytes; a batch's texts are read back by seeking to their offsets and tokenized when the batch is
needed (:class:`~edgecompress.text.data.Encoded`), so memory does not grow with the texts'
length or number beyond those 16 bytes.

CSV records may span lines (quoted newlines): the reader tracks where each record starts, not
where each line does. Hugging Face datasets are in :mod:`edgecompress.text.hfsource`;
:func:`edgecompress.text.data.scan_texts` picks the reader.
"""

from __future__ import annotations

import csv
import hashlib
import json
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgecompress.errors import DataError

MAX_EMPTY_NAMED = 5


class TextRows(Protocol):
    """Texts addressed by row number: ``len``, ``read(rows)`` and a description."""

    where: str

    def __len__(self) -> int: ...

    def read(self, rows: np.ndarray) -> list[str]: ...


@dataclass
class Codes:
    """Values of one column as small integer codes (first-seen order) plus the values."""

    values: list[str] = field(default_factory=list)
    codes: array = field(default_factory=lambda: array("i"))
    _index: dict[str, int] = field(default_factory=dict)

    def add(self, value: str) -> None:
        code = self._index.get(value)
        if code is None:
            code = self._index[value] = len(self.values)
            self.values.append(value)
        self.codes.append(code)

    def array(self) -> np.ndarray:
        return np.frombuffer(self.codes, dtype=np.int32)


@dataclass
class TextScan:
    """One pass over a text source: the rows, their labels and splits, and what is wrong."""

    rows: TextRows
    labels: Codes
    splits: Codes | None
    digest: str
    label_order: list[str] | None = None  # a ClassLabel's names, in label-id order
    empty: list[str] = field(default_factory=list)  # where the first empty texts are
    empty_count: int = 0
    kind: str = "csv"
    given_splits: bool = False  # the splits come from the data (not a split column)

    def note_empty(self, where: str) -> None:
        self.empty_count += 1
        if len(self.empty) < MAX_EMPTY_NAMED:
            self.empty.append(where)


class MemoryTexts:
    """Texts already in memory (a list), for callers that have them (the Python API, tests)."""

    where = "texts in memory"

    def __init__(self, texts: list[str]) -> None:
        self.texts = [clean_text(t) for t in texts]

    def __len__(self) -> int:
        return len(self.texts)

    def read(self, rows: np.ndarray) -> list[str]:
        return [self.texts[int(r)] for r in rows]


def file_format(path: Path, fmt: str) -> str:
    """``csv``/``tsv``/``jsonl``/``hf`` from the recipe's ``format`` (``auto``: the suffix,
    a directory is a saved Hugging Face dataset)."""
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "hf"
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".tab"):
        return "tsv"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    return "csv"


class FileTexts:
    """The text column of a CSV/TSV/JSONL file, read back by byte offset.

    Opens the file per :meth:`read` call (cheap next to a forward pass), so an instance can be
    pickled or shared with a forked process.
    """

    def __init__(self, path: Path, kind: str, key: str | int, offsets: array) -> None:
        self.path, self.kind, self.key, self.offsets = path, kind, key, offsets
        self.where = str(path)

    def __len__(self) -> int:
        return len(self.offsets)

    def read(self, rows: np.ndarray) -> list[str]:
        rows = np.asarray(rows, dtype=np.int64)
        out: list[str] = [""] * len(rows)
        with open(self.path, "rb") as fh:
            for pos in np.argsort(rows, kind="stable"):
                fh.seek(self.offsets[int(rows[pos])])
                if self.kind == "jsonl":
                    value = json.loads(fh.readline().decode("utf-8-sig"))[self.key]
                else:
                    record = next(csv.reader(_decoded(fh), delimiter=_delimiter(self.kind)))
                    value = record[self.key]
                out[pos] = clean_text(value)
        return out


def _delimiter(kind: str) -> str:
    return "\t" if kind == "tsv" else ","


def clean_text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _decoded(fh: Any) -> Iterator[str]:
    """Lines of a binary file from its current position, decoded (the csv module's input)."""
    while line := fh.readline():
        yield line.decode("utf-8")


class _LineFeed:
    """Feeds a binary file's lines to ``csv.reader`` and remembers where each record began,
    the line number of that start, and hashes every byte."""

    def __init__(self, fh: Any, digest: Any) -> None:
        self.fh, self.digest = fh, digest
        self.line = 0
        self.record_start = self.record_line = 0
        self._fresh = True

    def next_record(self) -> None:
        self._fresh = True

    def __iter__(self) -> Iterator[str]:
        while True:
            pos = self.fh.tell()
            raw = self.fh.readline()
            if not raw:
                return
            self.line += 1
            self.digest.update(raw)
            if self._fresh:
                self.record_start, self.record_line, self._fresh = pos, self.line, False
            try:
                yield raw.decode("utf-8-sig" if self.line == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{self.fh.name}:{self.line}: not UTF-8 text ({err})") from None


def _column_index(header: list[str], name: str, path: Path, what: str) -> int:
    try:
        return header.index(name)
    except ValueError:
        raise DataError(f"{path}: column {name!r} not found (data.{what}); columns: "
                        f"{', '.join(header)}") from None


def scan_delimited(path: Path, kind: str, cfg: Any) -> TextScan:
    """One pass over a CSV/TSV file with a header line."""
    digest = hashlib.sha256()
    offsets = array("q")
    labels, splits = Codes(), Codes() if cfg.split_column else None
    try:
        with open(path, "rb") as fh:
            feed = _LineFeed(fh, digest)
            reader = csv.reader(iter(feed), delimiter=_delimiter(kind))
            header = next(reader, None)
            if not header:
                raise DataError(f"{path}: no rows")
            wanted = [(cfg.text_column, "text_column"), (cfg.label_column, "label_column")]
            if cfg.split_column:
                wanted.append((cfg.split_column, "split_column"))
            cols = [_column_index(header, name, path, what) for name, what in wanted]
            need = max(cols) + 1
            scan = TextScan(FileTexts(path, kind, cols[0], offsets), labels, splits, "",
                            kind=kind)
            feed.next_record()
            for record in reader:
                where = f"{path}:{feed.record_line}"
                if not record:  # a blank line
                    feed.next_record()
                    continue
                if len(record) < need:
                    raise DataError(f"{where}: {len(record)} fields, the header has "
                                    f"{len(header)} (a missing delimiter or quote?)")
                offsets.append(feed.record_start)
                if not clean_text(record[cols[0]]):
                    scan.note_empty(where)
                labels.add(clean_text(record[cols[1]]))
                if splits is not None:
                    splits.add(clean_text(record[cols[2]]).lower())
                feed.next_record()
    except OSError as err:
        raise DataError(f"{path}: unreadable: {err}") from None
    except csv.Error as err:
        raise DataError(f"{path}: not valid {kind.upper()}: {err}") from None
    scan.digest = digest.hexdigest()
    return scan


def scan_jsonl(path: Path, cfg: Any) -> TextScan:
    """One pass over a JSON Lines file (one object per line)."""
    digest = hashlib.sha256()
    offsets = array("q")
    labels, splits = Codes(), Codes() if cfg.split_column else None
    scan = TextScan(FileTexts(path, "jsonl", cfg.text_column, offsets), labels, splits, "",
                    kind="jsonl")
    keys = [(cfg.text_column, "text_column"), (cfg.label_column, "label_column")]
    if cfg.split_column:
        keys.append((cfg.split_column, "split_column"))
    try:
        with open(path, "rb") as fh:
            lineno, pos = 0, 0
            while raw := fh.readline():
                lineno += 1
                digest.update(raw)
                start, pos = pos, pos + len(raw)
                if not raw.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    obj = json.loads(raw.decode("utf-8-sig" if lineno == 1 else "utf-8"))
                except (ValueError, UnicodeDecodeError) as err:
                    raise DataError(f"{where}: not a JSON object: {err}") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{where}: not a JSON object (got {type(obj).__name__})")
                for key, what in keys:
                    if key not in obj:
                        raise DataError(f"{where}: key {key!r} not found (data.{what}); keys: "
                                        f"{', '.join(map(str, obj))}")
                offsets.append(start)
                if not clean_text(obj[cfg.text_column]):
                    scan.note_empty(where)
                labels.add(clean_text(obj[cfg.label_column]))
                if splits is not None:
                    splits.add(clean_text(obj[cfg.split_column]).lower())
    except OSError as err:
        raise DataError(f"{path}: unreadable: {err}") from None
    scan.digest = digest.hexdigest()
    return scan
