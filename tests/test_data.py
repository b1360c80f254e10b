"""Tests for edgecompress.data: loaders, stratified splits, normalisation and calibration files."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgecompress.data import (
    DatasetBundle,
    compute_normalization,
    load_calibration,
    load_dataset,
    sample_calibration,
    save_calibration,
    stratified_partition,
    stratified_split,
)
from edgecompress.errors import ConfigError, DataError
from edgecompress.io import sha256_file

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits() -> DatasetBundle:
    return load_dataset("digits", seed=0)


def _id_images(n: int, h: int = 4, w: int = 4) -> np.ndarray:
    """float32 (N, H, W) images whose every pixel is the sample index: lets tests trace rows."""
    return np.repeat(np.arange(n, dtype=np.float32), h * w).reshape(n, h, w)


def _ids(split_x: np.ndarray, bundle: DatasetBundle) -> np.ndarray:
    """Recover the sample ids written by ``_id_images`` from a normalised split."""
    raw = split_x[:, 0, 0, 0] * bundle.std[0] + bundle.mean[0]
    return np.rint(raw).astype(np.int64)


def _write_idx(path: Path, arr: np.ndarray) -> None:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}
    header = bytes([0, 0, codes[arr.dtype], arr.ndim])
    header += np.asarray(arr.shape, dtype=">u4").tobytes()
    data = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


# --- split.py ---------------------------------------------------------------------------------

def test_stratified_partition_is_exact_disjoint_proportional_and_seeded() -> None:
    y = np.repeat(np.arange(4), [100, 50, 30, 20])
    test, val, train = stratified_partition(y, [40, 20], rng=3)
    assert (len(test), len(val), len(train)) == (40, 20, 140)
    joined = np.concatenate([test, val, train])
    assert np.array_equal(np.sort(joined), np.arange(200))
    assert np.bincount(y[test], minlength=4).tolist() == [20, 10, 6, 4]
    assert np.bincount(y[val], minlength=4).tolist() == [10, 5, 3, 2]
    again = stratified_partition(y, [40, 20], rng=3)
    assert all(np.array_equal(a, b) for a, b in zip([test, val, train], again, strict=True))
    other = stratified_partition(y, [40, 20], rng=4)
    assert not np.array_equal(test, other[0])
    assert not np.all(np.diff(test) > 0), "parts should be shuffled, not sorted"


def test_stratified_split_handles_singleton_class_and_rejects_oversize() -> None:
    y = np.array([0] * 20 + [1])
    train, val, test = stratified_split(y, 0.2, 0.2, rng=0)
    assert len(train) + len(val) + len(test) == 21
    assert (len(val), len(test)) == (4, 4)
    with pytest.raises(DataError, match="cannot take parts"):
        stratified_partition(y, [15, 10])


def test_compute_normalization_constant_channel_gets_unit_std() -> None:
    x = np.zeros((5, 2, 3, 3), np.float32)
    x[:, 1] = np.arange(5, dtype=np.float32)[:, None, None]
    mean, std = compute_normalization(x)
    assert mean == pytest.approx([0.0, 2.0])
    assert std == pytest.approx([1.0, np.sqrt(2.0)])


# --- digits -----------------------------------------------------------------------------------

def test_digits_shapes_sizes_and_stratification(digits: DatasetBundle) -> None:
    assert digits.name == "digits"
    assert digits.input_shape == (1, 8, 8)
    assert digits.num_classes == 10 and digits.class_names == [str(i) for i in range(10)]
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1168, 270, 359)
    for split in (digits.train, digits.val, digits.test):
        assert split.x.dtype == np.float32 and split.y.dtype == np.int64
        assert split.x.shape[1:] == (1, 8, 8)
        assert split.y.min() == 0 and split.y.max() == 9
    full = np.bincount(np.concatenate([digits.train.y, digits.val.y, digits.test.y]))
    expected_test = full * 359 / 1797
    assert np.all(np.abs(np.bincount(digits.test.y) - expected_test) <= 1)


def test_digits_normalised_with_train_statistics(digits: DatasetBundle) -> None:
    x = digits.train.x
    assert float(x.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(x.std()) == pytest.approx(1.0, abs=1e-4)
    assert 0.2 < digits.mean[0] < 0.4 and 0.3 < digits.std[0] < 0.45
    for split in (digits.train, digits.val, digits.test):
        raw = split.x * digits.std[0] + digits.mean[0]
        assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
        assert np.allclose(raw * 16, np.rint(raw * 16), atol=1e-4), "pixels should be k/16"
    assert abs(float(digits.test.x.mean())) > 1e-6, "test must not be normalised on itself"


def test_digits_normalize_false_limit_and_seed() -> None:
    bundle = load_dataset("digits", normalize=False, limit=200, seed=1)
    assert bundle.mean == [0.0] and bundle.std == [1.0]
    assert bundle.train.x.min() == 0.0 and bundle.train.x.max() == 1.0
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 200
    assert set(bundle.train.y.tolist()) == set(range(10))
    assert bundle.fingerprint() == load_dataset("digits", normalize=False, limit=200,
                                                seed=1).fingerprint()
    assert bundle.fingerprint() != load_dataset("digits", normalize=False, limit=200,
                                                seed=2).fingerprint()


def test_digits_resize_to_image_size() -> None:
    bundle = load_dataset("digits", image_size=(16, 12), limit=100)
    assert bundle.input_shape == (1, 16, 12)
    assert bundle.train.x.shape[1:] == (1, 16, 12)


def test_fingerprint_stable_across_processes(digits: DatasetBundle) -> None:
    code = ("from edgecompress.data import load_dataset; "
            "print(load_dataset('digits', seed=0).fingerprint())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == digits.fingerprint()
    assert len(digits.fingerprint()) == 64


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"source": "mnist"}, "unknown dataset source"),
        ({"source": "digits", "path": "x.npz"}, "takes no path"),
        ({"source": "npz"}, "needs a path"),
        ({"source": "digits", "val_fraction": 0.0}, "val_fraction"),
        ({"source": "digits", "val_fraction": 0.5, "test_fraction": 0.5}, "must be < 1"),
        ({"source": "digits", "limit": 0}, "limit"),
        ({"source": "digits", "image_size": (0, 8)}, "image_size"),
    ],
)
def test_invalid_options_raise_config_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_dataset(**kwargs)


def test_too_small_dataset_raises(tmp_path: Path) -> None:
    path = tmp_path / "tiny.npz"
    np.savez(path, x=_id_images(3), y=np.array([0, 1, 2]))
    with pytest.raises(DataError, match="too few samples"):
        load_dataset("npz", path)


# --- npz --------------------------------------------------------------------------------------

def test_npz_split_is_exact_partition(tmp_path: Path) -> None:
    path = tmp_path / "ids.npz"
    np.savez(path, x=_id_images(200), y=np.arange(200) % 4)
    bundle = load_dataset("npz", path, seed=5)
    assert bundle.name == "ids" and bundle.input_shape == (1, 4, 4)
    ids = [_ids(s.x, bundle) for s in (bundle.train, bundle.val, bundle.test)]
    assert [len(i) for i in ids] == [130, 30, 40]
    assert np.array_equal(np.sort(np.concatenate(ids)), np.arange(200))
    for split, split_ids in zip((bundle.train, bundle.val, bundle.test), ids, strict=True):
        assert np.array_equal(split.y, split_ids % 4), "labels must stay with their images"


def test_npz_layouts_and_uint8_scaling(tmp_path: Path) -> None:
    nhwc = np.zeros((40, 5, 6, 3), np.uint8)
    nhwc[..., 1] = 51
    nhwc[..., 2] = 255
    np.savez(tmp_path / "nhwc.npz", x=nhwc, y=np.arange(40) % 2)
    bundle = load_dataset("npz", tmp_path / "nhwc.npz", normalize=False)
    assert bundle.input_shape == (3, 5, 6)
    assert np.allclose(bundle.train.x[:, 0], 0.0)
    assert np.allclose(bundle.train.x[:, 1], 0.2)
    assert np.allclose(bundle.train.x[:, 2], 1.0)

    nchw = np.full((40, 2, 5, 6), 7.5, np.float32)
    np.savez(tmp_path / "nchw.npz", x=nchw, y=np.arange(40) % 2)
    bundle = load_dataset("npz", tmp_path / "nchw.npz", normalize=False)
    assert bundle.input_shape == (2, 5, 6)
    assert np.all(bundle.train.x == 7.5), "float images are not rescaled"


def test_npz_grayscale_converts_rgb(tmp_path: Path) -> None:
    rgb = np.zeros((30, 4, 4, 3), np.uint8)
    rgb[..., 0] = 255
    np.savez(tmp_path / "rgb.npz", x=rgb, y=np.arange(30) % 3)
    bundle = load_dataset("npz", tmp_path / "rgb.npz", grayscale=True, normalize=False)
    assert bundle.input_shape == (1, 4, 4)
    assert np.allclose(bundle.train.x, 0.299)


def test_npz_given_test_split_is_kept_and_labels_remapped(tmp_path: Path) -> None:
    path = tmp_path / "given.npz"
    x = _id_images(150)
    y = np.where(np.arange(150) % 2 == 0, 3, 7)
    np.savez(path, x_train=x[:100], y_train=y[:100], x_test=x[100:], y_test=y[100:])
    bundle = load_dataset("npz", path, val_fraction=0.2)
    assert bundle.class_names == ["3", "7"] and bundle.num_classes == 2
    test_ids = _ids(bundle.test.x, bundle)
    assert np.array_equal(test_ids, np.arange(100, 150)), "given test split kept, in order"
    assert np.array_equal(bundle.test.y, (test_ids % 2 == 1).astype(np.int64))
    train_val = np.concatenate([_ids(bundle.train.x, bundle), _ids(bundle.val.x, bundle)])
    assert np.array_equal(np.sort(train_val), np.arange(100))
    assert len(bundle.val) == 20
    assert bundle.mean[0] == pytest.approx(_ids(bundle.train.x, bundle).mean(), rel=1e-6)


def test_npz_limit_shrinks_given_test_split_in_proportion(tmp_path: Path) -> None:
    path = tmp_path / "given.npz"
    x = _id_images(200)
    y = np.arange(200) % 4
    np.savez(path, x_train=x[:160], y_train=y[:160], x_test=x[160:], y_test=y[160:])
    bundle = load_dataset("npz", path, limit=100)
    assert len(bundle.train) + len(bundle.val) == 80 and len(bundle.test) == 20
    assert np.all(_ids(bundle.test.x, bundle) >= 160)
    assert np.bincount(bundle.test.y).tolist() == [5, 5, 5, 5]


def test_npz_custom_keys(tmp_path: Path) -> None:
    path = tmp_path / "custom.npz"
    np.savez(path, images=_id_images(60), labels=np.arange(60) % 3)
    bundle = load_dataset("npz", path, npz_keys=("images", "labels"))
    assert bundle.num_classes == 3 and len(bundle.test) == 12


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"a": np.zeros(3)}, r"keys present: \['a'\]"),
        ({"x": _id_images(10), "y": np.zeros(9, np.int64)}, r"'x'.*\(10, 4, 4\).*'y'.*\(9,\)"),
        ({"x": np.zeros((10, 4)), "y": np.zeros(10, np.int64)}, r"'x'.*shape \(10, 4\)"),
        ({"x": _id_images(10), "y": np.full(10, 0.5)}, r"'y'.*must be integers"),
        ({"x": _id_images(10), "y": np.zeros((10, 2))}, r"'y'.*shape \(10, 2\)"),
        ({"x": np.full((10, 2, 2), np.nan), "y": np.zeros(10)}, "NaN"),
        ({"x": np.float32(1.0), "y": np.zeros(10)}, r"\['x'\] is a scalar"),
    ],
)
def test_npz_bad_content_raises_naming_file_and_key(tmp_path: Path, arrays: dict,
                                                     match: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=match) as info:
        load_dataset("npz", path)
    assert "bad.npz" in str(info.value)


def test_npz_missing_corrupt_or_npy_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("npz", tmp_path / "nope.npz")
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(DataError, match="corrupt.npz"):
        load_dataset("npz", corrupt)
    npy = tmp_path / "single.npz"
    with open(npy, "wb") as fh:
        np.save(fh, np.zeros((3, 4)))
    with pytest.raises(DataError, match=r"single array of shape \(3, 4\)"):
        load_dataset("npz", npy)


# --- idx --------------------------------------------------------------------------------------

def _mnist_like(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.integers(0, 256, (n, 6, 5), dtype=np.uint8), (np.arange(n) % 3).astype(np.uint8)


def test_idx_with_t10k_gz_and_dot_spelling(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x_tr, y_tr = _mnist_like(rng, 90)
    x_te, y_te = _mnist_like(rng, 30)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", x_tr)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", y_tr)
    _write_idx(tmp_path / "t10k-images.idx3-ubyte", x_te)
    _write_idx(tmp_path / "t10k-labels.idx1-ubyte.gz", y_te)
    bundle = load_dataset("idx", tmp_path, normalize=False)
    assert bundle.name == tmp_path.name and bundle.input_shape == (1, 6, 5)
    assert np.allclose(bundle.test.x[:, 0], x_te / 255.0)
    assert np.array_equal(bundle.test.y, y_te)
    assert len(bundle.train) + len(bundle.val) == 90
    train_rows = {r.tobytes() for r in np.rint(bundle.train.x[:, 0] * 255).astype(np.uint8)}
    assert train_rows <= {r.tobytes() for r in x_tr}


def test_idx_without_t10k_is_split(tmp_path: Path) -> None:
    x, y = _mnist_like(np.random.default_rng(1), 100)
    _write_idx(tmp_path / "train-images-idx3-ubyte", x)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", y.astype(np.int32))
    bundle = load_dataset("idx", tmp_path)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (65, 15, 20)
    assert bundle.num_classes == 3


def test_idx_truncated_bad_magic_and_missing_files(tmp_path: Path) -> None:
    x, y = _mnist_like(np.random.default_rng(2), 20)
    images = tmp_path / "train-images-idx3-ubyte"
    labels = tmp_path / "train-labels-idx1-ubyte"
    with pytest.raises(DataError, match="missing train-images"):
        load_dataset("idx", tmp_path)
    _write_idx(images, x)
    _write_idx(labels, y)
    images.write_bytes(images.read_bytes()[:-7])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: truncated IDX file"):
        load_dataset("idx", tmp_path)
    images.write_bytes(b"\x12\x34\x08\x03" + b"\x00" * 12)
    with pytest.raises(DataError, match="train-images-idx3-ubyte is not an IDX file"):
        load_dataset("idx", tmp_path)
    _write_idx(images, x)
    _write_idx(labels, y[:15])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte has 20 images.*15 labels"):
        load_dataset("idx", tmp_path)
    _write_idx(labels, y)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", x)
    with pytest.raises(DataError, match="t10k-labels is missing"):
        load_dataset("idx", tmp_path)
    with pytest.raises(DataError, match="not a directory"):
        load_dataset("idx", images)


# --- imagefolder ------------------------------------------------------------------------------

COLOURS = {"cat": (200, 10, 30), "ant": (0, 255, 0), "bee": (10, 20, 250)}


def _image_folder(root: Path, per_class: int = 10, size: tuple[int, int] = (7, 5)) -> Path:
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", size, colour).save(root / name / f"{i}.png")
        (root / name / "notes.txt").write_text("not an image")
    return root


def test_imagefolder_rgb_classes_sorted_and_pixels(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "pets")
    Image.new("RGB", (7, 5), COLOURS["bee"]).save(root / "bee" / "extra.bmp")
    bundle = load_dataset("imagefolder", root, normalize=False)
    assert bundle.name == "pets" and bundle.class_names == ["ant", "bee", "cat"]
    assert bundle.input_shape == (3, 5, 7)
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 31
    for split in (bundle.train, bundle.val, bundle.test):
        for img, label in zip(split.x, split.y, strict=True):
            colour = np.asarray(COLOURS[bundle.class_names[label]]) / 255.0
            assert np.allclose(img, colour[:, None, None], atol=1e-6)


def test_imagefolder_grayscale_and_resize_mixed_sizes(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "mixed")
    Image.new("RGB", (12, 9), COLOURS["ant"]).save(root / "ant" / "big.jpg")
    with pytest.raises(DataError, match=r"0\.png is 7x5 but .*big\.jpg is 12x9"):
        load_dataset("imagefolder", root)
    bundle = load_dataset("imagefolder", root, image_size=(4, 6), grayscale=True)
    assert bundle.input_shape == (1, 4, 6) and bundle.train.x.shape[1:] == (1, 4, 6)
    assert len(bundle.mean) == 1


def test_imagefolder_errors(tmp_path: Path) -> None:
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        load_dataset("imagefolder", tmp_path / "none")
    root = _image_folder(tmp_path / "data")
    (root / "dog").mkdir()
    with pytest.raises(DataError, match=r"class folder .*dog contains no images"):
        load_dataset("imagefolder", root)
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read image .*broken\.png"):
        load_dataset("imagefolder", root)


# --- calibration ------------------------------------------------------------------------------

def test_sample_calibration_stratified_from_train_and_capped(digits: DatasetBundle) -> None:
    x, y = sample_calibration(digits, 100, seed=1)
    assert x.shape == (100, 1, 8, 8) and x.dtype == np.float32 and y.dtype == np.int64
    assert np.bincount(y, minlength=10).tolist() == [10] * 10
    train_rows = {r.tobytes() + bytes([lbl]) for r, lbl in zip(digits.train.x, digits.train.y,
                                                                strict=True)}
    assert all(r.tobytes() + bytes([lbl]) in train_rows for r, lbl in zip(x, y, strict=True))
    x2, _ = sample_calibration(digits, 100, seed=1)
    assert np.array_equal(x, x2)
    assert not np.array_equal(x, sample_calibration(digits, 100, seed=2)[0])
    x_all, _ = sample_calibration(digits, 10**6)
    assert len(x_all) == len(digits.train)
    with pytest.raises(ConfigError):
        sample_calibration(digits, 0)


def test_calibration_roundtrip_and_sidecar(digits: DatasetBundle, tmp_path: Path) -> None:
    x, y = sample_calibration(digits, 64, seed=3)
    npz = save_calibration(tmp_path / "calib", x, y, digits, seed=3)
    assert npz == tmp_path / "calib" / "calibration.npz"
    assert sorted(p.name for p in npz.parent.iterdir()) == ["calibration.json", "calibration.npz"]
    meta = json.loads((npz.parent / "calibration.json").read_text())
    assert meta == {
        "format_version": 1, "num_samples": 64, "input_shape": [1, 8, 8], "dtype": "float32",
        "layout": "NCHW", "normalization": {"mean": digits.mean, "std": digits.std},
        "dataset": "digits", "dataset_fingerprint": digits.fingerprint(), "seed": 3,
        "sha256": sha256_file(npz), "num_classes": 10, "class_names": digits.class_names,
    }
    with np.load(npz) as archive:
        assert sorted(archive.files) == ["x", "y"]
        assert archive["y"].dtype == np.int64 and np.array_equal(archive["y"], y)
    for where in (npz.parent, npz, npz.parent / "calibration.json"):
        loaded, loaded_meta = load_calibration(where)
        assert loaded.dtype == np.float32 and np.array_equal(loaded, x)
        assert loaded_meta == meta
    raw = loaded * np.float32(meta["normalization"]["std"][0]) + meta["normalization"]["mean"][0]
    assert np.allclose(raw * 16, np.rint(raw * 16), atol=1e-4), "sidecar stats undo the norm"
    save_calibration(tmp_path / "again", x, y, digits, seed=3)
    assert sha256_file(tmp_path / "again" / "calibration.npz") == meta["sha256"]


def test_load_calibration_rejects_tampering(digits: DatasetBundle, tmp_path: Path) -> None:
    x, y = sample_calibration(digits, 20)
    npz = save_calibration(tmp_path, x, y, digits, seed=0)
    sidecar = tmp_path / "calibration.json"
    meta = json.loads(sidecar.read_text())

    sidecar.write_text(json.dumps({**meta, "format_version": 2}))
    with pytest.raises(DataError, match=r"calibration\.json: format_version 2"):
        load_calibration(tmp_path)
    sidecar.write_text(json.dumps({**meta, "num_samples": 21}))
    with pytest.raises(DataError, match=r"calibration\.npz\['x'\].*\(20, 1, 8, 8\).*21, 1, 8, 8"):
        load_calibration(tmp_path)
    sidecar.write_text(json.dumps({k: v for k, v in meta.items() if k != "seed"}))
    with pytest.raises(DataError, match=r"missing keys \['seed'\]"):
        load_calibration(tmp_path)
    sidecar.write_text(json.dumps(meta))
    with open(npz, "r+b") as fh:
        fh.seek(200)
        fh.write(b"\xff\xff")
    with pytest.raises(DataError, match=r"calibration\.npz: SHA-256 .* does not match"):
        load_calibration(npz)
    sidecar.unlink()
    with pytest.raises(DataError, match=r"sidecar .*calibration\.json is missing"):
        load_calibration(tmp_path)
    with pytest.raises(DataError, match=r"other\.npz is missing"):
        load_calibration(tmp_path / "other.npz")


def test_save_calibration_validates_inputs(digits: DatasetBundle, tmp_path: Path) -> None:
    x, y = sample_calibration(digits, 10)
    with pytest.raises(DataError, match=r"\(N, 1, 8, 8\).*\(10, 3, 8, 8\)"):
        save_calibration(tmp_path, np.repeat(x, 3, axis=1), y, digits, seed=0)
    with pytest.raises(DataError, match=r"shape \(9,\)"):
        save_calibration(tmp_path, x, y[:9], digits, seed=0)
    with pytest.raises(DataError, match=r"\[0, 10\)"):
        save_calibration(tmp_path, x, y + 10, digits, seed=0)
    assert list(tmp_path.iterdir()) == [], "nothing written when the input is rejected"


# --- limits that say what they do (issue 15) -------------------------------------------------

def _write_mnist_dir(directory: Path, n_train: int, n_test: int, classes: int = 4) -> None:
    """Small idx files with train and t10k parts; every pixel of sample i is i % 256 and the
    rows are told apart by the label file order (ids: train 0..n_train-1, test after)."""
    directory.mkdir(parents=True, exist_ok=True)
    ids = np.arange(n_train + n_test)
    x = np.repeat((ids % 251).astype(np.uint8), 6 * 5).reshape(-1, 6, 5)
    y = (ids % classes).astype(np.uint8)
    _write_idx(directory / "train-images-idx3-ubyte", x[:n_train])
    _write_idx(directory / "train-labels-idx1-ubyte", y[:n_train])
    _write_idx(directory / "t10k-images-idx3-ubyte.gz", x[n_train:])
    _write_idx(directory / "t10k-labels-idx1-ubyte.gz", y[n_train:])


def test_idx_train_limit_keeps_t10k_test_split_whole(tmp_path: Path) -> None:
    _write_mnist_dir(tmp_path / "fmnist", 400, 100)
    full = load_dataset("idx", tmp_path / "fmnist", normalize=False, seed=3)
    bundle = load_dataset("idx", tmp_path / "fmnist", normalize=False, seed=3, train_limit=120,
                          name="Fashion-MNIST (tiny)")
    # The official test split: every t10k sample, in file order, not shrunk.
    assert len(bundle.test) == 100
    assert np.array_equal(bundle.test.x, full.test.x) and np.array_equal(bundle.test.y, full.test.y)
    # The training pool: exactly train_limit samples, stratified, ratio of train to val kept.
    assert len(bundle.train) + len(bundle.val) == 120
    assert len(bundle.val) == 18  # 60 of 400 unlimited -> 15 % of 120
    assert np.bincount(bundle.train.y).tolist() == [26, 26, 25, 25]
    assert np.bincount(bundle.val.y).min() >= 4
    # Drawn from the unlimited train/val splits, so no sample moved between splits.
    full_train = {r.tobytes() for r in full.train.x}
    assert all(r.tobytes() in full_train for r in bundle.train.x)
    # Seeded: same seed, same subset; another seed, another subset; the test split never moves.
    again = load_dataset("idx", tmp_path / "fmnist", normalize=False, seed=3, train_limit=120)
    assert np.array_equal(again.train.x, bundle.train.x)
    other = load_dataset("idx", tmp_path / "fmnist", normalize=False, seed=4, train_limit=120)
    assert not np.array_equal(other.train.x, bundle.train.x)
    assert np.array_equal(other.test.y, bundle.test.y)
    info = bundle.describe()
    assert info["name"] == bundle.name == "Fashion-MNIST (tiny)"
    assert info["source"] == "idx" and info["path"] == str((tmp_path / "fmnist").resolve())
    assert info["test_split"].startswith("given: ") and "t10k-labels" in info["test_split"]
    assert info["samples"] == {"train": len(bundle.train), "val": 18, "test": 100}
    assert info["available"] == {"pool": 400, "test": 100}
    assert info["limits"] == {"train_limit": 120} and info["test_shrunk_from"] is None
    assert info["transforms"] == [{"op": "scale", "factor": 1 / 255, "why": "uint8 pixels"}]
    json.dumps(info)  # JSON-ready for the report


def test_eval_limit_shrinks_test_split_stratified_and_says_so(tmp_path: Path, caplog) -> None:
    _write_mnist_dir(tmp_path / "d", 200, 100)
    with caplog.at_level("WARNING", logger="edgecompress.data.datasets"):
        bundle = load_dataset("idx", tmp_path / "d", eval_limit=40, normalize=True)
    assert len(bundle.test) == 40 and np.bincount(bundle.test.y).tolist() == [10] * 4
    assert len(bundle.train) + len(bundle.val) == 200
    assert "eval_limit=40" in caplog.text and "40 of the 100 test samples" in caplog.text
    info = bundle.describe()
    assert info["test_shrunk_from"] == 100 and info["limits"] == {"eval_limit": 40}
    assert [t["op"] for t in info["transforms"]] == ["scale", "normalize"]
    # Without a given test split, eval_limit shrinks the carved one; train_limit leaves it alone.
    np.savez(tmp_path / "a.npz", x=_id_images(300), y=np.arange(300) % 3)
    base = load_dataset("npz", tmp_path / "a.npz")
    limited = load_dataset("npz", tmp_path / "a.npz", train_limit=60)
    assert np.array_equal(_ids(limited.test.x, limited), _ids(base.test.x, base))
    assert len(limited.train) + len(limited.val) == 60
    assert len(load_dataset("npz", tmp_path / "a.npz", eval_limit=30).test) == 30


def test_old_limit_shrinking_given_test_split_is_logged_and_recorded(tmp_path: Path,
                                                                     caplog) -> None:
    _write_mnist_dir(tmp_path / "d", 400, 100)
    with caplog.at_level("WARNING", logger="edgecompress.data.datasets"):
        bundle = load_dataset("idx", tmp_path / "d", limit=200)
    assert len(bundle.test) == 40 and len(bundle.train) + len(bundle.val) == 160
    assert "also shrank the given test split" in caplog.text and "train_limit" in caplog.text
    assert bundle.describe()["test_shrunk_from"] == 100


def test_limit_cannot_be_combined_and_limits_below_class_count_refused(tmp_path: Path) -> None:
    from edgecompress.recipe import DataConfig

    with pytest.raises(ConfigError, match="train_limit"):
        load_dataset("digits", limit=100, train_limit=50)
    with pytest.raises(ValueError, match="cannot be combined"):
        DataConfig(limit=100, eval_limit=50)
    cfg = DataConfig(train_limit=500, eval_limit=100, name="my digits")
    assert (cfg.train_limit, cfg.eval_limit, cfg.name) == (500, 100, "my digits")
    for key in ("limit", "train_limit", "eval_limit"):
        with pytest.raises(DataError, match=rf"data\.{key}=5 is smaller than the number of "
                                            r"classes \(10\)"):
            load_dataset("digits", **{key: 5})


# --- data sanity (issue 16) ------------------------------------------------------------------

@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.r_[np.arange(59) % 3, -1], r"'y'\]: label -1 at row 59 is negative"),
        (np.zeros(60, np.int64), r"'y'\]: found 1 class\(es\); classification needs at least 2"),
        (np.r_[np.zeros(30), np.ones(29), 2], r"class '2' has 1 sample\(s\) in all but none in "
                                              r"the (train|val|test) split"),
        (np.r_[np.arange(58) % 2, np.nan, 1], r"'y'\]: labels must be integers; row 58"),
    ],
)
def test_bad_labels_raise_data_error_naming_file_and_label(tmp_path: Path, labels: np.ndarray,
                                                           match: str) -> None:
    path = tmp_path / "labels.npz"
    np.savez(path, x=_id_images(60), y=labels)
    with pytest.raises(DataError, match=match) as info:
        load_dataset("npz", path)
    assert str(path) in str(info.value)
    assert info.value.exit_code == 2


def test_nan_pixel_names_the_row(tmp_path: Path) -> None:
    x = _id_images(40)
    x[17, 2, 1] = np.inf
    np.savez(tmp_path / "nan.npz", x=x, y=np.arange(40) % 2)
    with pytest.raises(DataError, match=r"nan\.npz\['x'\]: images contain NaN or infinite values "
                                        r"at row 17 "):
        load_dataset("npz", tmp_path / "nan.npz")


def test_given_test_label_unknown_to_train_is_refused(tmp_path: Path) -> None:
    x = _id_images(80)
    y = np.arange(80) % 2
    y_test = y[60:].copy()
    y_test[5] = 9
    np.savez(tmp_path / "g.npz", x_train=x[:60], y_train=y[:60], x_test=x[60:], y_test=y_test)
    with pytest.raises(DataError, match=r"g\.npz\['y_test'\]: label 9 at row 5 does not occur in "
                                        r"the training data"):
        load_dataset("npz", tmp_path / "g.npz")


def test_label_mapping_is_logged_and_recorded(tmp_path: Path, caplog) -> None:
    np.savez(tmp_path / "m.npz", x=_id_images(90), y=np.arange(90) % 3 * 5 + 1)  # 1, 6, 11
    with caplog.at_level("WARNING", logger="edgecompress.data.checks"):
        bundle = load_dataset("npz", tmp_path / "m.npz")
    assert "mapped" in caplog.text and "'11': 2" in caplog.text
    assert bundle.describe()["label_mapping"] == {"1": 0, "6": 1, "11": 2}
    assert bundle.class_names == ["1", "6", "11"]
    assert load_dataset("digits", limit=100).describe()["label_mapping"] is None


def test_imagefolder_single_class_refused(tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "only" / "a.png")
    with pytest.raises(DataError, match=r"found 1 class\(es\)"):
        load_dataset("imagefolder", tmp_path)


def test_calibration_smaller_than_class_count_warns(digits: DatasetBundle, caplog) -> None:
    with caplog.at_level("WARNING", logger="edgecompress.data.calibration"):
        x, _ = sample_calibration(digits, 10)
    assert len(x) == 10 and caplog.text == ""
    with caplog.at_level("WARNING", logger="edgecompress.data.calibration"):
        sample_calibration(digits, 6)
    assert "6 samples cannot cover the 10 classes" in caplog.text


# --- image folders read lazily ----------------------------------------------------------------

def test_imagefolder_decodes_only_the_images_a_split_keeps(tmp_path: Path, monkeypatch) -> None:
    from edgecompress.data.stream import _Decode

    root = _image_folder(tmp_path / "pets", per_class=40)
    decoded: list[int] = []
    original = _Decode.__getitem__

    def counting(self, i):
        decoded.append(i)
        return original(self, i)

    monkeypatch.setattr(_Decode, "__getitem__", counting)
    bundle = load_dataset("imagefolder", root, train_limit=30, eval_limit=9, normalize=False)
    assert (len(bundle.train) + len(bundle.val), len(bundle.test)) == (30, 9)
    assert len(decoded) == len(set(decoded)) == 39, "each kept image decoded once, no others"
    for split in (bundle.train, bundle.val, bundle.test):
        for img, label in zip(split.x, split.y, strict=True):
            colour = np.asarray(COLOURS[bundle.class_names[label]]) / 255.0
            assert np.allclose(img, colour[:, None, None], atol=1e-6)
    assert bundle.describe()["available"] == {"pool": 120, "test": None}


def _stream(listing, image_size, workers):
    from edgecompress.data.stream import ImageStream

    return ImageStream(listing.files, np.arange(len(listing.files)), listing.shape,
                       image_size=image_size, workers=workers)


def test_streamed_images_in_worker_processes_match_and_report_bad_files(tmp_path: Path) -> None:
    from edgecompress.data.imagefolder import scan_image_folder

    root = _image_folder(tmp_path / "pets", per_class=4)
    Image.new("RGB", (7, 5), (1, 2, 3)).save(root / "cat" / "z.webp", lossless=True)
    listing = scan_image_folder(root, None, grayscale=False)
    assert len(listing.files) == 13 and listing.shape == (3, 5, 7)
    in_process = _stream(listing, None, workers=0)[np.arange(13)]
    in_workers = _stream(listing, None, workers=2)[np.arange(13)[::-1]]
    assert np.array_equal(in_workers, in_process[::-1])
    assert np.allclose(in_process[12], np.asarray([1, 2, 3])[:, None, None] / 255.0)
    # With image_size no header is read up front: a broken file fails when decoded, in a
    # worker, and reaches the caller as one clean DataError naming it.
    (root / "ant" / "0.png").write_bytes(b"not a png")
    listing = scan_image_folder(root, (5, 7), grayscale=False)
    with pytest.raises(DataError, match=r"cannot read image .*ant/0\.png") as info:
        _stream(listing, (5, 7), workers=2)[np.arange(13)]
    assert "Traceback" not in str(info.value)


def test_imagefolder_size_check_honours_exif_rotation(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "pets", per_class=3, size=(5, 7))  # 5 wide, 7 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display: stored 7x5, shown 5x7
    Image.new("RGB", (7, 5), COLOURS["cat"]).save(root / "cat" / "rot.jpg", exif=exif)
    bundle = load_dataset("imagefolder", root, normalize=False, val_fraction=0.3,
                          test_fraction=0.3)
    assert bundle.input_shape == (3, 7, 5)


def test_imagefolder_with_train_and_test_folders_keeps_test_whole(tmp_path: Path,
                                                                  caplog) -> None:
    root = tmp_path / "pets"
    _image_folder(root / "train", per_class=20)
    test = _image_folder(root / "test", per_class=4)
    Image.new("RGB", (7, 5), (9, 9, 9)).save(test / "ant" / "odd.png")  # test rows are traceable
    bundle = load_dataset("imagefolder", root, train_limit=30, normalize=False)
    assert bundle.class_names == ["ant", "bee", "cat"] and bundle.name == "pets"
    assert len(bundle.test) == 13 and len(bundle.train) + len(bundle.val) == 30
    assert np.bincount(bundle.test.y).tolist() == [5, 4, 4]
    assert sum(np.allclose(img, 9 / 255) for img in bundle.test.x) == 1
    assert bundle.describe()["test_split"] == f"given: image folder {root / 'test'}"
    # A class missing from the given test split is a warning; an unknown one is an error.
    for png in (test / "cat").iterdir():
        png.unlink()
    (test / "cat").rmdir()
    with caplog.at_level("WARNING", logger="edgecompress.data.checks"):
        assert len(load_dataset("imagefolder", root).test) == 9
    assert "class 'cat' has no samples in the test split" in caplog.text
    (test / "dog").mkdir()
    Image.new("RGB", (7, 5)).save(test / "dog" / "0.png")
    with pytest.raises(DataError, match=r"test class folder .*test/dog has no counterpart"):
        load_dataset("imagefolder", root)


def test_image_index_csv_and_json_with_given_split(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "imgs", per_class=6)
    rows = [(f"imgs/{cls}/{i}.png", cls, "test" if i >= 4 else "train")
            for cls in COLOURS for i in range(6)]
    (tmp_path / "index.csv").write_text(
        "path,label,split\n" + "".join(f"{p},{c},{s}\n" for p, c, s in rows))
    bundle = load_dataset("imagefolder", tmp_path / "index.csv", normalize=False,
                          val_fraction=0.25)
    assert bundle.class_names == ["ant", "bee", "cat"] and bundle.input_shape == (3, 5, 7)
    assert len(bundle.test) == 6 and len(bundle.train) + len(bundle.val) == 12
    for split in (bundle.train, bundle.val, bundle.test):
        for img, label in zip(split.x, split.y, strict=True):
            colour = np.asarray(COLOURS[bundle.class_names[label]]) / 255.0
            assert np.allclose(img, colour[:, None, None], atol=1e-6)
    assert bundle.describe()["test_split"].startswith("given: image index")
    # JSON, integer labels 1..3 (mapped and recorded), no split column: the test split is carved.
    entries = [{"path": str(root / cls / f"{i}.png"), "label": k + 1}
               for k, cls in enumerate(sorted(COLOURS)) for i in range(6)]
    (tmp_path / "index.json").write_text(json.dumps(entries))
    carved = load_dataset("imagefolder", tmp_path / "index.json", normalize=False,
                          val_fraction=0.2, test_fraction=0.2)
    assert carved.class_names == ["1", "2", "3"]
    assert carved.describe()["label_mapping"] == {"1": 0, "2": 1, "3": 2}
    assert len(carved.train) + len(carved.val) + len(carved.test) == 18


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("file,label\nimgs/ant/0.png,ant\n", "needs columns path and label"),
        ("path,label\nimgs/ant/0.png,ant\nimgs/ant/missing.png,ant\n",
         r"index\.csv, line 3: image .*missing\.png does not exist"),
        ("path,label,split\nimgs/ant/0.png,ant,train\nimgs/bee/0.png,bee,holdout\n",
         r"line 3: split 'holdout' is not one of"),
        ("path,label,split\nimgs/ant/0.png,ant,train\nimgs/bee/0.png,bee,train\n"
         "imgs/cat/0.png,cat,test\n", r"line 4: test label 'cat' does not occur"),
        ("path,label\nimgs/ant/0.png,ant\nimgs/ant/1.png,ant\n", r"found 1 class\(es\)"),
    ],
)
def test_image_index_errors_name_the_line(tmp_path: Path, text: str, match: str) -> None:
    _image_folder(tmp_path / "imgs", per_class=2)
    (tmp_path / "index.csv").write_text(text)
    with pytest.raises(DataError, match=match):
        load_dataset("imagefolder", tmp_path / "index.csv")
