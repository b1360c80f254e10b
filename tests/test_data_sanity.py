"""Data checks at the CLI: bad data is exit 2 naming the file and culprit, before any training
(issue 16 item 2); `bench` refuses a model whose class count differs from the data's; a run on
idx files with t10k reports its dataset (issue 15 item 3)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from tests.conftest import REPO, run_cli
from tests.reports import tiny_onnx


@pytest.fixture
def local_profile(tmp_path):
    """A profile that runs on any machine with ORT (no ISA requirement), a few quick runs."""
    raw = yaml.safe_load((REPO / "targets" / "x86-avx2.yaml").read_text())
    raw.update(name="here", runs=50, warmup=1, requires={})
    path = tmp_path / "here.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _npz(path, classes: int, n: int = 120):
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.random((n, 8, 8), dtype=np.float32), y=np.arange(n) % classes)
    return path


def test_bench_refuses_10_class_model_on_4_class_data(tmp_path, local_profile):
    model = tiny_onnx(tmp_path / "m.onnx", classes=10)
    data = _npz(tmp_path / "four.npz", classes=4)
    out = tmp_path / "out"
    result = run_cli("bench", str(model), "--target", str(local_profile), "--data", str(data),
                     "--out", str(out))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "outputs 10 classes" in result.stderr and "has 4 classes" in result.stderr
    assert str(data) in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() or not any(out.iterdir())
    # The same model on 10-class data of the same shape is measured.
    ten = _npz(tmp_path / "ten.npz", classes=10)
    ok = run_cli("bench", str(model), "--target", str(local_profile), "--data", str(ten),
                 "--out", str(tmp_path / "ok"))
    assert ok.returncode == 0, ok.stderr[-2000:]


@pytest.mark.parametrize(
    ("labels", "fragments"),
    [
        (np.r_[np.arange(119) % 4, -1], ["label -1 at row 119 is negative"]),
        (np.r_[np.arange(119) % 4, 7], ["class '7' has 1 sample(s)"]),
    ],
)
def test_run_with_bad_labels_exits_2_before_training(write_recipe, tmp_path, labels, fragments):
    data = tmp_path / "bad.npz"
    np.savez(data, x=np.random.default_rng(0).random((120, 8, 8), dtype=np.float32), y=labels)
    recipe = write_recipe({"data": {"source": "npz", "path": str(data), "limit": None}})
    out = tmp_path / "run"
    result = run_cli("run", str(recipe), "--out", str(out))
    assert result.returncode == 2, result.stderr[-2000:]
    for fragment in [str(data), *fragments]:
        assert fragment in result.stderr, (fragment, result.stderr[-2000:])
    assert "Traceback" not in result.stderr


def _write_idx(path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def test_run_on_idx_with_t10k_reports_a_whole_test_split(write_recipe, tmp_path):
    """A whole run on MNIST-format files: train_limit shrinks the training pool only, and the
    report records the dataset's given name, source, split sizes and transforms."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images * 255 / 16).astype(np.uint8)
    data = tmp_path / "idx"
    data.mkdir()
    _write_idx(data / "train-images-idx3-ubyte", pixels[:1400])
    _write_idx(data / "train-labels-idx1-ubyte", digits.target[:1400])
    _write_idx(data / "t10k-images-idx3-ubyte", pixels[1400:])
    _write_idx(data / "t10k-labels-idx1-ubyte", digits.target[1400:])
    recipe = write_recipe({"data": {"source": "idx", "path": str(data), "limit": None,
                                    "train_limit": 500, "name": "digits as idx"}})
    out = tmp_path / "run"
    result = run_cli("run", str(recipe), "--out", str(out))
    assert result.returncode in (0, 1), result.stderr[-3000:]
    dataset = json.loads((out / "report.json").read_text())["dataset"]
    assert dataset["name"] == "digits as idx" and dataset["source"] == "idx"
    assert dataset["samples"]["test"] == dataset["eval_samples"] == 397  # every t10k image
    assert dataset["samples"]["train"] + dataset["samples"]["val"] == 500
    assert dataset["available"] == {"pool": 1400, "test": 397}
    assert dataset["limits"] == {"train_limit": 500} and dataset["test_shrunk_from"] is None
    assert "t10k-labels-idx1-ubyte" in dataset["test_split"]
    assert [t["op"] for t in dataset["transforms"]] == ["scale", "normalize"]
    assert dataset["augmentations"] == {"finetune": "none", "distill": "none"}
    assert "Dataset **digits as idx** (idx), train/val/test" in (out / "report.md").read_text()
