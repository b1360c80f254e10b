"""Bad input: exit code 2, a message naming the culprit, and no run directory left behind."""

from __future__ import annotations

import numpy as np
import torch

from tests.conftest import run_cli


def _assert_rejected(result, out, *fragments):
    assert result.returncode == 2, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    assert not out.exists(), "a run directory was written for bad input"


def test_unknown_recipe_key(write_recipe, tmp_path):
    recipe = write_recipe({"stages": {"distill": {"alpah": 0.5}}})
    out = tmp_path / "run"
    _assert_rejected(run_cli("run", str(recipe), "--out", str(out)), out,
                     "stages.distill.alpah", "unknown key", str(recipe))


def test_missing_data_file(write_recipe, tmp_path):
    recipe = write_recipe({"data": {"source": "npz", "path": "nowhere.npz"}})
    out = tmp_path / "run"
    _assert_rejected(run_cli("run", str(recipe), "--out", str(out)), out, "nowhere.npz")


def test_missing_recipe_file(tmp_path):
    out = tmp_path / "run"
    _assert_rejected(run_cli("run", str(tmp_path / "absent.yaml"), "--out", str(out)), out,
                     "absent.yaml")


def _factory_file(tmp_path):
    path = tmp_path / "mymodels.py"
    path.write_text(
        "import torch.nn as nn\n"
        "def flat64(num_classes=10):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))\n")
    return path


def test_wrong_input_shape(write_recipe, tmp_path):
    # The teacher only accepts 8x8 inputs; the data are 12x12.
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.random((200, 12, 12), dtype=np.float32), y=np.arange(200) % 10)
    recipe = write_recipe({"data": {"source": "npz", "path": str(data), "limit": None},
                           "teacher": {"kind": "factory",
                                       "factory": f"{_factory_file(tmp_path)}:flat64"}})
    out = tmp_path / "run"
    _assert_rejected(run_cli("run", str(recipe), "--out", str(out)), out, "teacher",
                     "(2, 1, 12, 12)")


def test_corrupt_checkpoint(write_recipe, tmp_path):
    weights = tmp_path / "teacher.pt"
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    torch.save(model.state_dict(), weights)
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    recipe = write_recipe({"teacher": {"kind": "factory", "weights": str(weights),
                                       "factory": f"{_factory_file(tmp_path)}:flat64"}})
    out = tmp_path / "run"
    _assert_rejected(run_cli("run", str(recipe), "--out", str(out)), out, str(weights))


class _Exploit:
    """Unpickling this would run code (create a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_checkpoint_is_refused(write_recipe, tmp_path):
    marker = tmp_path / "PWNED"
    weights = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": _Exploit(str(marker))}, weights)
    recipe = write_recipe({"teacher": {"kind": "factory", "weights": str(weights),
                                       "factory": f"{_factory_file(tmp_path)}:flat64"}})
    out = tmp_path / "run"
    _assert_rejected(run_cli("run", str(recipe), "--out", str(out)), out, str(weights),
                     "trust_pickle")
    assert not marker.exists(), "loading the checkpoint executed pickled code"


def test_unknown_backend_lists_known_ones(write_recipe, tmp_path):
    recipe = write_recipe({"targets": [{"name": "x", "backend": "tensorflow-lite-micro"}]})
    out = tmp_path / "run"
    _assert_rejected(run_cli("run", str(recipe), "--out", str(out)), out,
                     "tensorflow-lite-micro", "onnxruntime")


def test_help_works():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("run", "demo", "validate"):
        assert command in result.stdout
