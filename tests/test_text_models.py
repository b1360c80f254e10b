"""Text path, PyTorch side: HF loading, students, losses, head/FFN pruning with reload."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers", reason="transformers not installed (extra: text)")
import torch  # noqa: E402

from edgecompress.errors import ConfigError, ModelError  # noqa: E402
from edgecompress.text.data import collate, encode, load_text_dataset  # noqa: E402
from edgecompress.text.losses import TextDistillLoss, check_layer_map  # noqa: E402
from edgecompress.text.models import (  # noqa: E402
    build_student,
    encoder_params,
    load_hf,
    model_summary,
)
from edgecompress.text.recipe import StudentConfig, TextDataConfig  # noqa: E402
from tests.text_fixtures import tiny_bert_dir, write_sentiment_csv  # noqa: E402


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return tiny_bert_dir(tmp_path_factory.mktemp("bert") / "tiny", layers=4)


def _batch(tokenizer, n=6):
    enc = tokenizer(["a great film", "dull and boring plot with a messy ending", "superb"] * 2,
                    truncation=True, max_length=32)
    return collate(enc["input_ids"][:n], tokenizer.pad_token_id)


def test_load_hf_is_local_and_checks_head_size(bert_dir, tmp_path):
    model, tok = load_hf(bert_dir, num_labels=2)
    assert model.config._attn_implementation == "eager"
    assert tok.pad_token == "[PAD]"
    with pytest.raises(ModelError, match="2 labels, the data has 3"):
        load_hf(bert_dir, num_labels=3)
    with pytest.raises(ModelError, match="no config.json"):
        load_hf(tmp_path, num_labels=2)


def test_distilbert_style_student_copies_layers(bert_dir):
    teacher, _ = load_hf(bert_dir)
    student, kept = build_student(teacher, StudentConfig(keep_layers=[1, 3]), seed=0)
    assert kept == [1, 3] and student.config.num_hidden_layers == 2
    t_layers, s_layers = teacher.bert.encoder.layer, student.bert.encoder.layer
    for s, t in zip(s_layers, [t_layers[1], t_layers[3]], strict=True):
        assert torch.equal(s.attention.self.query.weight, t.attention.self.query.weight)
    assert encoder_params(student) * 2 == encoder_params(teacher)
    with pytest.raises(ModelError, match="out of range"):
        build_student(teacher, StudentConfig(keep_layers=[4]), seed=0)
    _, evenly = build_student(teacher, StudentConfig(num_layers=2), seed=0)
    assert evenly == [1, 3]


def test_narrow_student_and_losses(bert_dir):
    teacher, tok = load_hf(bert_dir)
    student, kept = build_student(
        teacher, StudentConfig(num_layers=2, hidden_size=16, num_attention_heads=2,
                               intermediate_size=32), seed=0)
    assert student.config.hidden_size == 16 and model_summary(student)["heads"] == [2, 2]
    ids, mask = _batch(tok)
    loss_fn = TextDistillLoss(temperature=2.0, kd=1.0, ce=0.5, hidden=1.0, attention=1.0,
                              layer_map=[(0, 0), (1, 2), (2, 4)], student_width=16,
                              teacher_width=32)
    assert isinstance(loss_fn.proj[0], torch.nn.Linear)  # widths differ: learned projection
    kw = {"output_hidden_states": True, "output_attentions": True}
    s_out = student(input_ids=ids, attention_mask=mask, **kw)
    with torch.no_grad():
        t_out = teacher(input_ids=ids, attention_mask=mask, **kw)
    loss, parts = loss_fn(s_out, t_out, torch.tensor([1, 0, 1, 1, 0, 1]), mask)
    assert set(parts) == {"kd", "ce", "hidden", "attention"} and all(v > 0 for v in parts.values())
    loss.backward()
    assert loss_fn.proj[1].weight.grad is not None
    assert student.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    # A model distilled onto itself has zero hidden/attention/KD loss.
    same = TextDistillLoss(temperature=2.0, kd=1.0, ce=0.0, hidden=1.0, attention=1.0,
                           layer_map=[(1, 1), (4, 4)], student_width=32, teacher_width=32)
    _, zero = same(t_out, t_out, torch.zeros(6, dtype=torch.long), mask)
    assert max(zero.values()) < 1e-6
    with pytest.raises(ConfigError, match="layer_map"):
        check_layer_map([(3, 1)], student_layers=2, teacher_layers=4)


def test_head_and_ffn_pruning_reload_with_from_pretrained(bert_dir, tmp_path):
    pytest.importorskip("torch_pruning", reason="torch-pruning not installed (extra: prune)")
    from transformers import AutoModelForSequenceClassification

    from edgecompress.text.prune import prune_student
    from edgecompress.text.recipe import PruneConfig

    model, tok = load_hf(bert_dir)
    before = model_summary(model)
    ids, mask = _batch(tok)
    plan = prune_student(model, PruneConfig(enabled=True, heads_ratio=0.5, ffn_ratio=0.5,
                                            round_to=8),
                         {"input_ids": ids, "attention_mask": mask})
    after = model_summary(model)
    assert after["heads"] == [2, 2, 2, 2] and after["intermediate_size"] == 32
    assert plan["intermediate_size"] == 32 and len(plan["pruned_heads"]) == 4
    assert model.bert.encoder.layer[0].attention.self.query.weight.shape == (16, 32)
    assert model.bert.encoder.layer[0].output.dense.weight.shape == (32, 32)
    assert after["encoder_params"] < 0.6 * before["encoder_params"]
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
    model.save_pretrained(tmp_path / "pruned")
    reloaded = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "pruned", local_files_only=True, attn_implementation="eager").eval()
    assert reloaded.config.pruned_heads and reloaded.config.intermediate_size == 32
    with torch.no_grad():
        got = reloaded(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(ref, got, atol=1e-6)
    assert model_summary(reloaded)["encoder_params"] == after["encoder_params"]


def test_text_dataset_columns_split_and_errors(tmp_path):
    from edgecompress.errors import DataError

    path = write_sentiment_csv(tmp_path / "d.csv", rows=100)
    b = load_text_dataset(TextDataConfig(path=path, labels=["neg", "pos"]), seed=0)
    assert b.classes == ["neg", "pos"]
    assert len(b.train) + len(b.val) + len(b.test) == 100
    assert abs(b.test.labels.mean() - 0.5) < 0.01  # stratified
    again = load_text_dataset(TextDataConfig(path=path, labels=["neg", "pos"]), seed=0)
    assert (again.test.texts.rows == b.test.texts.rows).all()
    assert again.fingerprint == b.fingerprint
    with pytest.raises(DataError, match="column 'sentence' not found"):
        load_text_dataset(TextDataConfig(path=path, text_column="sentence"), seed=0)
    rows = [(f"text number {i} is {'good' if i % 2 else 'bad'}", i % 2) for i in range(30)]
    tsv = tmp_path / "d.tsv"
    tsv.write_text("sentence\ty\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    jsonl = tmp_path / "ok.jsonl"
    jsonl.write_text("".join(json.dumps({"t": t, "y": y, "split": "test" if i < 6 else
                                         "val" if i < 10 else "train"}) + "\n"
                             for i, (t, y) in enumerate(rows)))
    from_tsv = load_text_dataset(TextDataConfig(path=tsv, text_column="sentence",
                                                label_column="y"), seed=0)
    assert from_tsv.classes == ["0", "1"]
    assert from_tsv.train.texts.take([0])[0].startswith("text number")
    from_jsonl = load_text_dataset(TextDataConfig(path=jsonl, text_column="t", label_column="y",
                                                  split_column="split"), seed=0)
    assert (len(from_jsonl.test), len(from_jsonl.val)) == (6, 4)
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"t": "fine", "y": 1}\n{"t": "bad", "y": 0}\nnot json\n')
    with pytest.raises(DataError, match="d.jsonl:3"):
        load_text_dataset(TextDataConfig(path=jsonl, text_column="t", label_column="y"), seed=0)


def test_encode_truncates(bert_dir, tmp_path):
    _, tok = load_hf(bert_dir)
    path = write_sentiment_csv(tmp_path / "d.csv", rows=40)
    b = load_text_dataset(TextDataConfig(path=path), seed=0)
    enc = encode(tok, b.train, max_length=8)
    ids = enc.head(len(enc))
    assert max(len(x) for x in ids) == 8
    assert all(x[0] == tok.cls_token_id for x in ids)
