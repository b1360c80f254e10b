"""The Python API: the README's examples run as written (image with live modules, text from a
recipe), and its input errors are the documented exceptions."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import edgecompress
from edgecompress.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]


def _readme_example(tag: str) -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(rf"<!-- api-example:{tag} -->\n```python\n(.*?)```", text, re.S)
    assert match, f"README has no api-example:{tag} block"
    return match.group(1)


@pytest.mark.slow
def test_readme_image_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("torchao")
    pytest.importorskip("torch_pruning")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_readme_example("image"), "README.md[api-example:image]", "exec"), scope)
    result = scope["result"]
    assert result.run_dir == Path("runs/api-image") and result.report_json.is_file()
    assert result.report_html.is_file() and (result.run_dir / "junit.xml").is_file()
    targets = {t["name"]: t for t in result.report["targets"]}
    assert set(result.artifacts) == set(targets) and all(p.is_file()
                                                          for p in result.artifacts.values())
    assert all(t["status"] == "ok" for t in targets.values())
    int8 = next(t for t in targets.values() if t["precision"] == "int8")
    assert int8["fp32_nodes"] == [] and sum(int8["int8_kernels"].values()) > 0
    # The live modules went through the factory registry and the arrays through an npz.
    recipe = result.report["recipe"]
    assert recipe["teacher"]["factory"] == "edgecompress.api:live_model"
    dataset = result.report["dataset"]
    assert recipe["data"]["source"] == "npz" and dataset["available"]["test"] == 397
    assert dataset["name"] == "arrays passed to compress()"
    assert result.passed == (result.violations == [])
    # Same call again: every stage is up to date, nothing retrains.
    again = edgecompress.compress(scope["teacher"], scope["student"],
                                  train=(scope["x"][:1400], scope["y"][:1400]),
                                  test=(scope["x"][1400:], scope["y"][1400:]),
                                  recipe=recipe, out="runs/api-image")
    assert again.report["targets"] == result.report["targets"]


@pytest.mark.slow
def test_readme_text_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.chdir(REPO)
    code = _readme_example("text").replace('"runs/api-text"', repr(str(tmp_path / "text")))
    scope: dict = {}
    exec(compile(code, "README.md[api-example:text]", "exec"), scope)
    result = scope["result"]
    assert result.report["dataset"] and result.report_md.is_file()  # no report.html for text yet
    # One epoch on 600 rows is a smoke budget: the numbers exist, not that they are good.
    assert 0.0 <= result.report["student"]["accuracy_fp32"] <= 1.0
    assert all(t["status"] == "ok" for t in result.report["targets"])


def test_dataset_objects_become_arrays(tmp_path):
    from edgecompress.live import as_arrays

    data = torch.utils.data.TensorDataset(torch.zeros(5, 1, 4, 4), torch.arange(5))
    x, y = as_arrays(data, "train")
    assert x.shape == (5, 1, 4, 4) and x.dtype == np.float32 and list(y) == [0, 1, 2, 3, 4]
    with pytest.raises(DataError, match="train: 3 images but 2 labels"):
        as_arrays((np.zeros((3, 1, 4, 4)), np.zeros(2)), "train")
    with pytest.raises(DataError, match="train: expected a map-style Dataset"):
        as_arrays(42, "train")


def test_bad_api_input_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="test data without train data"):
        edgecompress.compress(test=(np.zeros((2, 1, 8, 8)), np.zeros(2)), out=tmp_path / "r")
    with pytest.raises(ConfigError, match="teacher: expected an nn.Module"):
        edgecompress.compress(teacher=3.5, out=tmp_path / "r")
    with pytest.raises(ConfigError, match="stages.distill.epochs"):
        edgecompress.compress(stages={"distill": {"epochs": 0}}, out=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_live_model_of_another_process_is_a_clear_error():
    from edgecompress.api import live_model, register_module
    from edgecompress.errors import ModelError

    module = torch.nn.Linear(2, 2)
    spec = register_module(module)
    copy = live_model(**spec["kwargs"])
    assert copy is not module and torch.equal(copy.weight, module.weight)
    assert register_module(module) == spec  # same weights, same key: runs resume
    with pytest.raises(ModelError, match="another Python process"):
        live_model("Linear-0000")


def test_text_task_refuses_what_it_cannot_take(tmp_path):
    """The family decides what compress() accepts: the text family names what it takes for a
    teacher and for texts, before anything runs."""
    from torch import nn

    import edgecompress

    recipe = {"task": "text-classification", "data": {"path": "x.csv"},
              "teacher": {"scratch": {}}}
    with pytest.raises(ConfigError, match="teacher: expected a Hugging Face directory, a "
                                          r"\(model, tokenizer\) pair .*Linear"):
        edgecompress.compress(nn.Linear(2, 2), recipe=recipe, out=tmp_path / "r")
    with pytest.raises(ConfigError, match="text-classification: student must be a recipe"):
        edgecompress.compress(student=nn.Linear(2, 2), recipe=recipe, out=tmp_path / "r")
    with pytest.raises(DataError, match="train: row 0 is not a"):
        edgecompress.compress(recipe=recipe, train=([1], [0]), out=tmp_path / "r")
    with pytest.raises(DataError, match="train: row 1: the text must be a non-empty string"):
        edgecompress.compress(recipe=recipe, train=[("good", "pos"), ("", "neg")],
                              out=tmp_path / "r")
    with pytest.raises(DataError, match="needs columns 'text' and 'label'"):
        edgecompress.compress(recipe=recipe, train={"sentence": ["a"]}, out=tmp_path / "r")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_text_compress_takes_a_live_model_and_texts_in_memory(tmp_path):
    """A Hugging Face (model, tokenizer) pair and (text, label) rows: saved/written once next
    to the run, read by the same text stages; the same call again resumes (nothing reruns)."""
    import csv

    pytest.importorskip("transformers")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tests.text_fixtures import tiny_bert_dir, write_sentiment_csv

    folder = tiny_bert_dir(tmp_path / "bert", layers=2, hidden=32, heads=4, ffn=64)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with open(write_sentiment_csv(tmp_path / "t.csv", rows=200), encoding="utf-8") as f:
        rows = [(r["text"], r["label"]) for r in csv.DictReader(f)]
    sections = dict(
        recipe={"task": "text-classification", "data": {"max_length": 24},
                "student": {"keep_layers": [1]},  # teacher options: in the recipe section
                "teacher": {"finetune": {"epochs": 2, "lr": 0.003, "batch_size": 16}}},
        distill={"epochs": 1, "lr": 0.002, "batch_size": 16},
        quant={"method": "ptq_dynamic", "teacher_reference": False},
        targets=[{"name": "int8", "precision": "int8", "seq_len": 24, "runs": 5,
                  "warmup": 1, "min_runs": 5}],
        out=tmp_path / "run")
    result = edgecompress.compress((model, tokenizer), train=rows[:160], test=rows[160:],
                                   **sections)
    report = result.report
    assert report["dataset"]["name"] == "texts passed to compress()"
    assert report["dataset"]["samples"]["test"] == 40 and "test" in report["dataset"][
        "given_splits"]
    saved = tmp_path / "run.inputs" / "teacher"
    assert report["recipe"]["teacher"]["path"] == str(saved)
    assert report["targets"][0]["status"] == "ok"  # (2 epochs: plumbing, not accuracy)
    # What the run started from is the live model passed in, weight for weight.
    from safetensors.torch import load_file

    weights = load_file(saved / "model.safetensors")
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items()
               if k in weights) and len(weights) > 10
    again = edgecompress.compress((model, tokenizer), train=rows[:160], test=rows[160:],
                                  **sections)
    assert again.report["targets"] == report["targets"]  # resumed: nothing was measured again
