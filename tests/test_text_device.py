"""The text family's training device (``device: auto | cpu | cuda``): the loops follow the
model to the run's device; export, QAT and the engines stay on the CPU."""

from __future__ import annotations

import pytest
import torch
import yaml

pytest.importorskip("transformers", reason="transformers not installed (extra: text)")

from tests.conftest import run_cli  # noqa: E402
from tests.text_fixtures import tiny_bert_dir, write_sentiment_csv  # noqa: E402


def _tiny(tmp_path):
    import numpy as np

    from edgecompress.text.data import TextSplit, encode
    from edgecompress.text.models import load_hf

    model, tok = load_hf(tiny_bert_dir(tmp_path / "bert", layers=1, hidden=32, heads=2, ffn=64))
    texts = ["a great film", "a dull film", "superb cast", "boring plot"] * 4
    split = TextSplit.from_texts(texts, np.array([1, 0, 1, 0] * 4))
    return model, encode(tok, split, 16), int(tok.pad_token_id or 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_text_recipe_asking_for_cuda_without_cuda_exits_2(tmp_path):
    data = write_sentiment_csv(tmp_path / "reviews.csv", rows=40)
    teacher = tiny_bert_dir(tmp_path / "teacher", layers=1, hidden=32, heads=2, ffn=64)
    recipe = {"version": 1, "task": "text-classification", "device": "cuda",
              "data": {"path": data.name, "labels": ["neg", "pos"], "max_length": 16},
              "teacher": {"path": teacher.name}}
    path = tmp_path / "text.yaml"
    path.write_text(yaml.safe_dump(recipe))
    done = run_cli("run", str(path), "--out", str(tmp_path / "run"))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "'cuda' requested but no CUDA device" in done.stderr
    assert not (tmp_path / "run").exists()


def test_text_loops_follow_the_model_device(tmp_path):
    from edgecompress.text.recipe import DistillConfig
    from edgecompress.text.train import model_device, predict, train

    model, data, pad = _tiny(tmp_path)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    model.to(device)
    result = train(model, data, data, DistillConfig(epochs=1, lr=1e-3, batch_size=8), pad,
                   seed=0)
    assert model_device(model) == device and result["best_epoch"] == 1
    logits = predict(model, data, pad)
    assert logits.shape == (16, 2) and logits.dtype.kind == "f"  # a CPU array either way
