"""Text data kept on disk: CSV/TSV/JSONL rows read back by offset (quoted newlines, BOM, odd
characters), saved Hugging Face datasets, limits that leave a given test split whole, memory
that does not grow with the corpus, and clear errors naming the line/column at fault."""

from __future__ import annotations

import csv
import json
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecompress.errors import ConfigError, DataError
from edgecompress.text.data import batches, encode, load_text_dataset, scan_texts
from edgecompress.text.recipe import TextDataConfig, parse_text_recipe

# Texts as users' files hold them: quotes, delimiters, newlines inside fields, non-ASCII.
TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x00")
               | st.sampled_from([",", "\t", '"', "\n", "\r", "é", "字"]),
               min_size=1, max_size=40).filter(lambda t: t.strip())


def _write_csv(path, rows, delimiter=",", bom=False):
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(["id", "text", "label"])
        for i, (text, label) in enumerate(rows):
            writer.writerow([i, text, label])
    return path


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(TEXT, min_size=1, max_size=30), kind=st.sampled_from(["csv", "tsv",
                                                                             "jsonl"]),
       bom=st.booleans())
def test_rows_read_back_by_offset_equal_what_was_written(tmp_path, texts, kind, bom):
    path = tmp_path / f"d.{kind}"
    rows = [(t, "pos" if i % 2 else "neg") for i, t in enumerate(texts)]
    if kind == "jsonl":
        path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows),
                        encoding="utf-8-sig" if bom else "utf-8")
    else:
        _write_csv(path, rows, "\t" if kind == "tsv" else ",", bom)
    scan = scan_texts(TextDataConfig(path=path))
    order = np.random.default_rng(0).permutation(len(rows))
    assert scan.rows.read(order) == [rows[i][0].strip() for i in order]
    assert [scan.labels.values[c] for c in scan.labels.array()] == [y for _, y in rows]


def _sentiment_rows(n, length=12, seed=0):
    rng = np.random.default_rng(seed)
    words = np.array(["great", "dull", "film", "plot", "cast", "story", "very", "quite"])
    return [(" ".join(rng.choice(words, length)) + (" great" if i % 2 else " dull"),
             "pos" if i % 2 else "neg") for i in range(n)]


def test_a_given_test_split_stays_whole_under_train_limit(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = _sentiment_rows(300)
    path.write_text("".join(json.dumps({"text": t, "label": y,
                                        "split": "test" if i < 100 else "train"}) + "\n"
                            for i, (t, y) in enumerate(rows)))
    cfg = TextDataConfig(path=path, split_column="split", train_limit=50)
    b = load_text_dataset(cfg, seed=0)
    assert len(b.test) == 100  # given: never shrunk by train_limit
    assert len(b.train) + len(b.val) == 50 and len(b.val) > 0  # val carved from train
    assert b.info["given_splits"] == ["train", "test"]
    assert b.info["train_limit"] == {"from": 200, "to": 50}
    assert abs(b.train.labels.mean() - 0.5) < 0.1  # stratified
    small = load_text_dataset(TextDataConfig(path=path, split_column="split", eval_limit=40),
                              seed=0)
    assert len(small.test) == 40 and small.info["eval_limit"] == {"from": 100, "to": 40}
    assert small.fingerprint != b.fingerprint


def test_limit_cannot_be_combined_with_train_limit(tmp_path):
    with pytest.raises(ConfigError, match="limit cannot be combined"):
        parse_text_recipe({"version": 1, "task": "text-classification",
                           "data": {"path": "d.csv", "limit": 100, "train_limit": 50},
                           "teacher": {"scratch": {}}}, source="r.yaml", base_dir=tmp_path)


def test_memory_does_not_grow_with_the_number_of_texts(tmp_path):
    """Scanning + one tokenized epoch: the Python heap's peak grows by far less per extra row
    than one text takes as a string (about 400 bytes here), i.e. texts and ids are not held."""
    from edgecompress.text.models import load_hf
    from tests.text_fixtures import tiny_bert_dir

    _, tok = load_hf(tiny_bert_dir(tmp_path / "bert", layers=1, hidden=16, heads=2, ffn=32))
    peaks = {}
    for n in (2_000, 20_000):
        path = _write_csv(tmp_path / f"d{n}.csv", _sentiment_rows(n, length=60))
        tracemalloc.start()
        b = load_text_dataset(TextDataConfig(path=path), seed=0)
        seen = sum(len(labels) for _, _, labels in batches(encode(tok, b.train, 32), 64, 0,
                                                           shuffle=True))
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert seen == len(b.train)
    per_row = (peaks[20_000] - peaks[2_000]) / 18_000
    assert per_row < 100, f"{per_row:.1f} bytes of peak heap per extra row"


def test_bad_rows_are_named_by_line(tmp_path):
    bad = tmp_path / "short.csv"
    bad.write_text('text,label\n"fine, really",pos\nno label here\n"good",neg\n')
    with pytest.raises(DataError, match=r"short.csv:3: 1 fields"):
        scan_texts(TextDataConfig(path=bad))
    empty = tmp_path / "empty.csv"
    empty.write_text('text,label\n"a\nb",pos\n"  ",neg\nok,pos\n"",neg\n')
    with pytest.raises(DataError, match=r"2 empty 'text' text\(s\), at .*empty.csv:4, "
                                        r".*empty.csv:6"):
        load_text_dataset(TextDataConfig(path=empty), seed=0)
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"text,label\ncaf\xe9,pos\n")
    with pytest.raises(DataError, match=r"latin.csv:2: not UTF-8"):
        scan_texts(TextDataConfig(path=latin))
    keys = tmp_path / "k.jsonl"
    keys.write_text('{"text": "a", "label": 1}\n{"txt": "b", "label": 0}\n')
    with pytest.raises(DataError, match=r"k.jsonl:2: key 'text' not found .*keys: txt, label"):
        scan_texts(TextDataConfig(path=keys))
    split = tmp_path / "s.csv"
    _write_csv(split, [("x", "pos")])
    with pytest.raises(DataError, match="column 'part' not found"):
        scan_texts(TextDataConfig(path=split, split_column="part"))


datasets = pytest.importorskip("datasets", reason="Hugging Face datasets not installed "
                                                  "(extra: hf)")


def _save_dict(path, splits, class_label=True):
    features = datasets.Features({
        "sentence": datasets.Value("string"),
        "label": datasets.ClassLabel(names=["neg", "pos"]) if class_label
        else datasets.Value("string")})
    parts = {}
    for name, rows in splits.items():
        labels = [(1 if y == "pos" else 0) if class_label else y for _, y in rows]
        if name == "unsupervised":
            labels = [-1] * len(rows)
        parts[name] = datasets.Dataset.from_dict({"sentence": [t for t, _ in rows],
                                                  "label": labels}, features=features)
    datasets.DatasetDict(parts).save_to_disk(str(path))
    return path


def test_hf_dataset_dict_keeps_its_splits(tmp_path):
    rows = _sentiment_rows(160)
    path = _save_dict(tmp_path / "hf", {"train": rows[:100], "validation": rows[100:120],
                                        "test": rows[120:], "unsupervised": rows[:10]})
    cfg = TextDataConfig(path=path, text_column="sentence", name="toy reviews")
    b = load_text_dataset(cfg, seed=0)
    assert b.classes == ["neg", "pos"] and b.name == "toy reviews"
    assert (len(b.train), len(b.val), len(b.test)) == (100, 20, 40)
    assert b.info["source"] == "hf" and b.info["given_splits"] == ["train", "val", "test"]
    assert b.test.texts.take([0, 39]) == [rows[120][0], rows[159][0]]
    assert b.test.labels.tolist() == [1 if y == "pos" else 0 for _, y in rows[120:]]
    with pytest.raises(DataError, match="split_column is for a single Dataset"):
        load_text_dataset(TextDataConfig(path=path, text_column="sentence",
                                         split_column="label"), seed=0)
    with pytest.raises(DataError, match=r"no text column 'text'; columns: \['sentence', "
                                        r"'label'\]"):
        load_text_dataset(TextDataConfig(path=path), seed=0)


def test_hf_single_dataset_with_string_labels_is_split_here(tmp_path):
    rows = _sentiment_rows(100)
    path = tmp_path / "single"
    datasets.Dataset.from_dict({"text": [t for t, _ in rows], "label": [y for _, y in rows],
                                "n": list(range(100))}).save_to_disk(str(path))
    b = load_text_dataset(TextDataConfig(path=path), seed=0)
    assert b.classes == ["neg", "pos"] and len(b.train) + len(b.val) + len(b.test) == 100
    assert b.info["given_splits"] == []
    with pytest.raises(DataError, match="column 'n' is Value"):
        load_text_dataset(TextDataConfig(path=path, text_column="n"), seed=0)


def test_hf_unlabelled_rows_in_a_used_split_are_refused(tmp_path):
    rows = _sentiment_rows(40)
    path = _save_dict(tmp_path / "hf", {"train": rows})
    loaded = datasets.load_from_disk(str(path))
    bad = loaded["train"].map(lambda r, i: {"label": -1 if i == 7 else r["label"]},
                              with_indices=True)
    datasets.DatasetDict({"train": bad}).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DataError, match=r"\[train\] row 7: label -1"):
        load_text_dataset(TextDataConfig(path=tmp_path / "bad", text_column="sentence"), seed=0)
