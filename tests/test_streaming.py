"""Streamed image folders (issue 15 items 1-2): splits stay on disk and decode per batch in
DataLoader workers, real-photo transforms from torchvision v2 (random train, deterministic
eval), statistics on a sample, bounded memory, and a whole run on 224x224 JPEGs."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecompress.data import load_dataset
from edgecompress.data.stream import ImageStream, PhotoTransforms, parity_sample
from edgecompress.devtools.synthetic_images import write_image_folder
from edgecompress.errors import ConfigError
from edgecompress.training import predict_logits
from tests.conftest import run_cli

pytest.importorskip("torchvision")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """3 classes x 40 JPEGs of differing sizes around 72x80."""
    return write_image_folder(tmp_path_factory.mktemp("data") / "photos", classes=3,
                              per_class=40, size=(72, 80), jitter=12)


def test_photo_transforms_random_for_training_and_fixed_for_evaluation(photos: Path) -> None:
    bundle = load_dataset("imagefolder", photos, transforms=PhotoTransforms(crop_size=48))
    x = bundle.train.x
    assert isinstance(x, ImageStream) and x.augments
    assert x.shape == (len(bundle.train), 3, 48, 48) and bundle.input_shape == (3, 48, 48)
    first, again = x[:8], x[np.arange(8)]
    assert first.dtype == np.float32 and np.array_equal(first, again), "eval is deterministic"
    train = next(x.batches([np.arange(8)], train=True))
    assert train.shape == first.shape and not np.allclose(train, first), "train is random"
    info = bundle.describe()
    assert info["streamed"] is True
    assert info["image_transforms"]["library"] == "torchvision.transforms.v2"
    assert [t["op"] for t in info["image_transforms"]["eval"]] == ["Resize", "CenterCrop"]
    # Normalised with statistics of the train split (a seeded sample of it).
    mean = np.asarray(bundle.mean, np.float32).reshape(1, 3, 1, 1)
    assert np.abs((np.asarray(x) * np.asarray(bundle.std).reshape(1, 3, 1, 1) + mean)
                  .mean(axis=(0, 2, 3))).max() <= 1.0


def test_streamed_statistics_on_every_image_equal_the_in_memory_ones(photos: Path) -> None:
    kw = {"image_size": (40, 40), "seed": 3}
    memory = load_dataset("imagefolder", photos, stream=False, **kw)
    streamed = load_dataset("imagefolder", photos, stream=True, stats_samples=10_000, **kw)
    assert isinstance(memory.train.x, np.ndarray) and isinstance(streamed.train.x, ImageStream)
    np.testing.assert_allclose(streamed.mean, memory.mean, rtol=1e-5)
    np.testing.assert_allclose(streamed.std, memory.std, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(streamed.test.x), memory.test.x, atol=1e-5)
    assert np.array_equal(streamed.test.y, memory.test.y)


def test_given_mean_and_std_are_used(photos: Path) -> None:
    bundle = load_dataset("imagefolder", photos, image_size=(16, 16), stream=True,
                          mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    raw = load_dataset("imagefolder", photos, image_size=(16, 16), normalize=False)
    assert bundle.mean == [0.5] * 3
    np.testing.assert_allclose(np.asarray(bundle.val.x), (raw.val.x - 0.5) / 0.25, atol=1e-5)


def test_auto_streams_above_the_memory_threshold(photos: Path, monkeypatch) -> None:
    assert isinstance(load_dataset("imagefolder", photos, image_size=(16, 16)).train.x,
                      np.ndarray), "a small folder is decoded into memory"
    monkeypatch.setattr("edgecompress.data.sources.STREAM_BYTES", 1000)
    assert isinstance(load_dataset("imagefolder", photos, image_size=(16, 16)).train.x,
                      ImageStream)


def test_a_streamed_epoch_holds_a_few_batches_not_the_split(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "many", classes=2, per_class=200, size=(64, 64))
    bundle = load_dataset("imagefolder", root, stream=True, workers=0, val_fraction=0.1,
                          test_fraction=0.1)
    x = bundle.train.x
    whole = len(x) * 3 * 64 * 64 * 4
    batches = [np.arange(i, min(len(x), i + 16)) for i in range(0, len(x), 16)]
    tracemalloc.start()
    seen = sum(b.shape[0] for b in x.batches(batches, train=True))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert seen == len(x) == 320
    batch = 16 * 3 * 64 * 64 * 4
    assert peak < 4 * batch, f"peak {peak} bytes for a split of {whole} bytes"
    assert 4 * batch <= whole / 5


def test_fingerprint_follows_the_files(photos: Path, tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(photos, tmp_path / "copy"))
    first = load_dataset("imagefolder", copy, stream=True, image_size=(16, 16)).fingerprint()
    assert load_dataset("imagefolder", copy, stream=True,
                        image_size=(16, 16)).fingerprint() == first
    victim = next((copy / "class_1").iterdir())
    os.utime(victim, ns=(1, 1))
    assert load_dataset("imagefolder", copy, stream=True,
                        image_size=(16, 16)).fingerprint() != first


def test_parity_sample_bounds_a_stream_and_keeps_arrays(photos: Path) -> None:
    bundle = load_dataset("imagefolder", photos, stream=True, image_size=(16, 16))
    x, y = parity_sample(bundle.train.x, bundle.train.y, limit=10)
    assert isinstance(x, np.ndarray) and x.shape == (10, 3, 16, 16) and len(y) == 10
    arr = np.zeros((20, 1, 2, 2), np.float32)
    assert parity_sample(arr, limit=10)[0] is arr


def test_predict_logits_streams_in_bounded_batches(photos: Path) -> None:
    import torch

    bundle = load_dataset("imagefolder", photos, transforms=PhotoTransforms(crop_size=32))
    sizes: list[int] = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            sizes.append(x.shape[0])
            return x.mean(dim=(2, 3))

    logits = predict_logits(Probe(), bundle.train.x, torch.device("cpu"), batch_size=20)
    assert logits.shape == (len(bundle.train), 3) and max(sizes) == 20
    np.testing.assert_allclose(logits, np.asarray(bundle.train.x).mean(axis=(2, 3)), atol=1e-5)


@pytest.mark.parametrize("data, fragment", [
    ({"source": "digits", "transforms": {"crop_size": 32}},
     "transforms needs source: imagefolder or hf"),
    ({"source": "imagefolder", "path": "x", "image_size": [8, 8], "transforms": {}},
     "image_size and transforms cannot be combined"),
    ({"source": "imagefolder", "path": "x", "stream": False, "transforms": {}},
     "need streaming"),
    ({"source": "imagefolder", "path": "x", "mean": [0.5]}, "mean and std must be given"),
    ({"source": "imagefolder", "path": "x", "transforms": {"scale": [0.5, 0.2]}}, "scale"),
])
def test_bad_streaming_options_exit_2(write_recipe, data, fragment) -> None:
    recipe = write_recipe({"data": {**data, "limit": None}})
    result = run_cli("validate", str(recipe))
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr and "Traceback" not in result.stderr


def test_load_dataset_refuses_photo_transforms_on_arrays() -> None:
    with pytest.raises(ConfigError, match="needs an image folder or a Hugging Face"):
        load_dataset("digits", transforms=PhotoTransforms(crop_size=16))


@pytest.mark.slow
def test_jpeg_folder_at_224_runs_end_to_end_with_photo_transforms(write_recipe,
                                                                  tmp_path: Path) -> None:
    """Done-when of issue 15: a recipe on 224x224 JPEGs with the real-photo transforms runs
    through finetune, distillation, PTQ, export and both ORT engines."""
    root = write_image_folder(tmp_path / "photos", classes=3, per_class=30, size=(240, 256),
                              jitter=24)
    recipe = write_recipe({
        "data": {"source": "imagefolder", "path": str(root), "limit": None,
                 "transforms": {"crop_size": 224, "color_jitter": 0.2},
                 "calibration_samples": 16, "name": "synthetic photos"},
        "teacher": {"kind": "builtin", "family": "resnet", "width": 0.25, "depth": 1},
        "student": {"kind": "builtin", "family": "resnet", "width": 0.25, "depth": 1},
        "stages": {"finetune": {"epochs": 1, "batch_size": 16},
                   "distill": {"epochs": 1, "batch_size": 16},
                   "qat": {"enabled": True, "mode": "ptq"}},
        "targets": [{"name": "int8", "backend": "onnxruntime", "precision": "int8",
                     "threads": 1, "warmup": 1, "runs": 50},
                    {"name": "fp32", "backend": "onnxruntime", "threads": 1, "warmup": 1,
                     "runs": 50}],
    })
    out = tmp_path / "run"
    result = run_cli("run", str(recipe), "--out", str(out))
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    dataset = report["dataset"]
    assert dataset["name"] == "synthetic photos" and dataset["streamed"] is True
    assert dataset["input_shape"] == [3, 224, 224]
    assert [t["op"] for t in dataset["image_transforms"]["train"]] == [
        "RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter"]
    engines = {t["name"]: t for t in report["targets"]}
    assert set(engines) == {"int8", "fp32"}
    assert all(0.0 <= t["accuracy"] <= 1.0 for t in engines.values())
    assert engines["int8"]["int8_kernels"], "the int8 engine runs int8 kernels"
    assert "streamed from disk, photo transforms (crop 224)" in (out / "report.md").read_text()


# --- Hugging Face datasets saved to disk ----------------------------------------------------------

def _hf_dataset(root: Path, *, per_class: int = 20, with_test: bool = True,
                class_label: bool = True) -> Path:
    """A DatasetDict (train [+ test]) of 24x20 RGB images whose colour is the class."""
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 40, 210)}
    rng = np.random.default_rng(0)

    def part(n: int) -> Any:
        images, labels = [], []
        for k, rgb in enumerate(colours.values()):
            for _ in range(n):
                pixels = np.clip(np.asarray(rgb) + rng.normal(0, 8, (20, 24, 3)), 0, 255)
                images.append(Image.fromarray(pixels.astype(np.uint8), "RGB"))
                labels.append(k if class_label else list(colours)[k])
        label = (datasets.ClassLabel(names=list(colours)) if class_label
                 else datasets.Value("string"))
        return datasets.Dataset.from_dict({"image": images, "label": labels},
                                          features=datasets.Features({"image": datasets.Image(),
                                                                      "label": label}))

    splits = {"train": part(per_class)}
    if with_test:
        splits["test"] = part(per_class // 2)
    datasets.DatasetDict(splits).save_to_disk(str(root))
    return root


def test_hf_dataset_on_disk_streams_with_its_class_names_and_test_split(tmp_path: Path) -> None:
    root = _hf_dataset(tmp_path / "hf")
    bundle = load_dataset("hf", root, stream=True, normalize=False, train_limit=30)
    assert bundle.class_names == ["red", "green", "blue"] and bundle.input_shape == (3, 20, 24)
    assert isinstance(bundle.train.x, ImageStream)
    assert len(bundle.test) == 30, "the given test split stays whole"
    assert len(bundle.train) + len(bundle.val) == 30
    pixels = np.asarray(bundle.test.x)
    centre = pixels.mean(axis=(2, 3))
    assert (centre.argmax(axis=1) == bundle.test.y).all(), "label k has colour k"
    info = bundle.describe()
    assert info["source"] == "hf" and "['label']" in info["test_split"]
    in_memory = load_dataset("hf", root, stream=False, normalize=False, train_limit=30)
    np.testing.assert_array_equal(in_memory.test.x, pixels)


def test_hf_dataset_with_string_labels_and_photo_transforms(tmp_path: Path) -> None:
    root = _hf_dataset(tmp_path / "hf", with_test=False, class_label=False)
    bundle = load_dataset("hf", root, transforms=PhotoTransforms(crop_size=16))
    assert bundle.class_names == ["blue", "green", "red"]  # sorted label strings
    assert bundle.train.x.shape[1:] == (3, 16, 16) and bundle.train.x.augments
    batch = next(bundle.train.x.batches([np.arange(4)], train=True))
    assert batch.shape == (4, 3, 16, 16) and np.isfinite(batch).all()


def test_hf_dataset_errors_name_the_culprit(tmp_path: Path) -> None:
    from edgecompress.errors import DataError

    root = _hf_dataset(tmp_path / "hf", per_class=4)
    with pytest.raises(DataError, match="no image column 'picture'"):
        load_dataset("hf", root, image_column="picture")
    with pytest.raises(DataError, match="not a directory"):
        load_dataset("hf", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="cannot read Hugging Face dataset"):
        load_dataset("hf", tmp_path / "empty")


def test_run_on_a_hf_dataset_reports_it(write_recipe, tmp_path: Path) -> None:
    root = _hf_dataset(tmp_path / "hf", per_class=30)
    recipe = write_recipe({"data": {"source": "hf", "path": str(root), "limit": None,
                                    "stream": True, "name": "colours"},
                           "stages": {"finetune": {"epochs": 1}, "distill": {"epochs": 1}}})
    out = tmp_path / "run"
    result = run_cli("run", str(recipe), "--out", str(out))
    assert result.returncode in (0, 1), result.stderr[-3000:]
    dataset = json.loads((out / "report.json").read_text())["dataset"]
    assert dataset["source"] == "hf" and dataset["streamed"] is True
    assert dataset["samples"]["test"] == 45 and dataset["class_names"] == ["red", "green", "blue"]


def test_cutmix_pastes_one_box_and_reports_the_kept_fraction() -> None:
    import torch

    from edgecompress.stages.augment import cutmix

    torch.manual_seed(0)
    x = torch.arange(4, dtype=torch.float32).reshape(4, 1, 1, 1).expand(4, 1, 16, 16).clone()
    out, perm, lam = cutmix(x)
    for i in range(4):
        changed = (out[i] != x[i]).float().mean().item()
        if perm[i] != i:
            assert changed == pytest.approx(1 - lam), "the pasted box is 1 - lambda of the image"
        assert set(out[i].unique().tolist()) <= {float(i), float(perm[i])}


# --- array sources (idx, npz) streamed from their own dtype --------------------------------------

def _idx_dir(root: Path) -> Path:
    from sklearn.datasets import load_digits

    from tests.test_data_sanity import _write_idx

    digits = load_digits()
    pixels = (digits.images * 255 / 16).astype(np.uint8)
    root.mkdir()
    _write_idx(root / "train-images-idx3-ubyte", pixels[:1400])
    _write_idx(root / "train-labels-idx1-ubyte", digits.target[:1400])
    _write_idx(root / "t10k-images-idx3-ubyte", pixels[1400:])
    _write_idx(root / "t10k-labels-idx1-ubyte", digits.target[1400:])
    return root


def test_idx_streams_from_the_memory_mapped_file_with_the_same_numbers(tmp_path: Path) -> None:
    from edgecompress.data.arraystream import ArrayStream

    root = _idx_dir(tmp_path / "idx")
    kw = {"train_limit": 600, "image_size": (12, 12), "seed": 1}
    memory = load_dataset("idx", root, **kw)
    streamed = load_dataset("idx", root, stream=True, **kw)
    x = streamed.train.x
    assert isinstance(x, ArrayStream) and x.raw.dtype == np.uint8
    base, chain = x.raw, []
    while base is not None:
        chain.append(type(base).__name__)
        base = getattr(base, "base", None)
    assert "memmap" in chain or "mmap" in chain, f"not file-backed: {chain}"
    assert not x.augments and streamed.describe()["streamed"] is True
    np.testing.assert_allclose(streamed.mean, memory.mean, rtol=1e-6)
    np.testing.assert_allclose(streamed.std, memory.std, rtol=1e-6)
    for split in ("train", "val", "test"):
        np.testing.assert_allclose(np.asarray(getattr(streamed, split).x),
                                   getattr(memory, split).x, atol=1e-5)
        assert np.array_equal(getattr(streamed, split).y, getattr(memory, split).y)
    rows = np.array([5, 1, 5, 0])
    np.testing.assert_allclose(x[rows], memory.train.x[rows], atol=1e-5)


def test_npz_streams_with_grayscale_and_auto_threshold(tmp_path: Path, monkeypatch) -> None:
    from edgecompress.data.arraystream import ArrayStream

    rng = np.random.default_rng(0)
    path = tmp_path / "rgb.npz"
    np.savez(path, x=rng.integers(0, 256, (90, 10, 10, 3), dtype=np.uint8),
             y=np.arange(90) % 3)
    memory = load_dataset("npz", path, grayscale=True)
    assert isinstance(memory.train.x, np.ndarray)
    monkeypatch.setattr("edgecompress.data.sources.STREAM_BYTES", 1000)
    streamed = load_dataset("npz", path, grayscale=True)
    assert isinstance(streamed.train.x, ArrayStream) and streamed.input_shape == (1, 10, 10)
    np.testing.assert_allclose(np.asarray(streamed.test.x), memory.test.x, atol=1e-5)
    assert streamed.fingerprint() != memory.fingerprint()
    assert load_dataset("npz", path, grayscale=True).fingerprint() == streamed.fingerprint()
