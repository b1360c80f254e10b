"""Live objects handed to :func:`edgecompress.compress` for a text recipe, turned into what the
text family reads from disk: a Hugging Face ``(model, tokenizer)`` pair is saved with
``save_pretrained`` into a directory, and in-memory texts are written once as a JSONL file
(``split`` column ``train``/``test`` when a test set is given).

Written to disk rather than kept in memory so the run stays what every run is: resumable, hashed
by content (the same objects again resume the run), and readable by torchrun workers.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgecompress.errors import ConfigError, DataError
from edgecompress.io import atomic_path


def teacher_section(teacher: Any, inputs_dir: Path) -> dict[str, Any] | None:
    """The recipe's ``teacher`` keys for ``teacher`` (None: a section dict, merged as it is).

    Accepts a Hugging Face directory (str/Path) or a live ``(model, tokenizer)`` pair, saved to
    ``inputs_dir/teacher``.

    Raises:
        ConfigError: Anything else, or a model without its tokenizer.
    """
    if teacher is None or isinstance(teacher, Mapping):
        return None
    if isinstance(teacher, (str, Path)):
        return {"path": str(teacher), "scratch": None}
    if isinstance(teacher, tuple) and len(teacher) == 2 and \
            all(callable(getattr(t, "save_pretrained", None)) for t in teacher):
        model, tokenizer = teacher
        out = inputs_dir / "teacher"
        if out.exists():
            shutil.rmtree(out)
        tmp = inputs_dir / ".teacher.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(out)
        return {"path": str(out), "scratch": None}
    if callable(getattr(teacher, "save_pretrained", None)):
        raise ConfigError("teacher: pass the Hugging Face model with its tokenizer, as "
                          "teacher=(model, tokenizer)")
    raise ConfigError(f"teacher: expected a Hugging Face directory, a (model, tokenizer) pair "
                      f"or a teacher section dict, got {type(teacher).__name__}")


def _rows(data: Any, role: str) -> list[tuple[str, Any]]:
    """``(text, label)`` rows from (text, label) pairs, a ``{"text": [...], "label": [...]}``
    mapping, or a Hugging Face ``Dataset`` with those columns (ClassLabel ids become names)."""
    names = None
    if hasattr(data, "column_names") and hasattr(data, "features"):  # a datasets.Dataset
        feature = data.features.get("label")
        names = getattr(feature, "names", None)
        data = data.to_dict()
    if isinstance(data, Mapping):
        missing = [k for k in ("text", "label") if k not in data]
        if missing:
            raise DataError(f"{role}: needs columns 'text' and 'label'; has {sorted(data)}")
        texts, labels = list(data["text"]), list(data["label"])
        if len(texts) != len(labels):
            raise DataError(f"{role}: {len(texts)} texts but {len(labels)} labels")
        data = list(zip(texts, labels, strict=True))
    if not isinstance(data, Sequence) or isinstance(data, (str, bytes)):
        raise DataError(f"{role}: expected (text, label) pairs, a {{'text': [...], 'label': "
                        f"[...]}} mapping or a Hugging Face Dataset, got {type(data).__name__}")
    rows = []
    for i, row in enumerate(data):
        if not (isinstance(row, (tuple, list)) and len(row) == 2):
            raise DataError(f"{role}: row {i} is not a (text, label) pair")
        text, label = row
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{role}: row {i}: the text must be a non-empty string")
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise DataError(f"{role}: row {i}: the label must be a string or an integer, got "
                            f"{type(label).__name__}")
        rows.append((text, names[label] if names is not None and isinstance(label, int)
                     else label))
    if not rows:
        raise DataError(f"{role}: no rows")
    return rows


def data_section(train: Any, test: Any, inputs_dir: Path) -> dict[str, Any]:
    """Write ``inputs_dir/texts.jsonl`` from in-memory texts; the recipe's ``data`` keys that
    read it (the test rows are kept whole as the test split)."""
    if train is None:
        raise ConfigError("test data without train data: pass train= as well")
    rows = [(t, lab, "train") for t, lab in _rows(train, "train")]
    if test is not None:
        rows += [(t, lab, "test") for t, lab in _rows(test, "test")]
    inputs_dir.mkdir(parents=True, exist_ok=True)
    path = inputs_dir / "texts.jsonl"
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for text, label, split in rows:
            f.write(json.dumps({"text": text, "label": str(label), "split": split},
                               ensure_ascii=False) + "\n")
    return {"path": str(path), "format": "jsonl", "text_column": "text",
            "label_column": "label", "split_column": "split" if test is not None else None,
            "name": "texts passed to compress()"}
