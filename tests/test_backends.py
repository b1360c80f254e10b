"""Tests for edgecompress.backends: registry, lazy runtime imports, ORT build/load/run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.backends import (
    BACKENDS,
    Capabilities,
    available_backends,
    get_backend,
)
from edgecompress.errors import BackendUnavailable, ConfigError
from edgecompress.export import compare_logits, export_onnx


def tiny_classifier() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    ).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    model = tiny_classifier()
    path = export_onnx(model, torch.randn(2, 1, 8, 8),
                       tmp_path_factory.mktemp("src") / "exported.onnx")
    return model, path


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((9, 1, 8, 8)).astype(np.float32)


def torch_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_unknown_backend_lists_known() -> None:
    with pytest.raises(ConfigError, match="onnxruntime") as info:
        get_backend("tensorrt-9000")
    assert "tensorrt-9000" in str(info.value)


def test_registry_contents() -> None:
    assert "onnxruntime" in BACKENDS
    backend = get_backend("onnxruntime")
    assert backend.name == "onnxruntime"
    assert backend.extra == "onnx"
    assert isinstance(backend.capabilities, Capabilities)
    assert backend.capabilities.precisions == ("fp32", "int8")
    assert available_backends()["onnxruntime"] == (True, "")


def test_validate_rejects_bad_precision_and_threads() -> None:
    backend = get_backend("onnxruntime")
    with pytest.raises(ConfigError) as info:
        backend.validate("int4", 1)
    assert "onnxruntime" in str(info.value)
    assert "int4" in str(info.value)
    assert "fp32" in str(info.value)
    with pytest.raises(ConfigError, match="threads 0"):
        backend.validate("fp32", 0)
    backend.validate("fp32", 4)


def test_build_rejects_unsupported_precision_and_options(
        exported: tuple[nn.Module, Path], tmp_path: Path) -> None:
    backend = get_backend("onnxruntime")
    with pytest.raises(ConfigError, match="int4"):
        backend.build(exported[1], tmp_path, precision="int4")
    with pytest.raises(ConfigError, match="bogus"):
        backend.build(exported[1], tmp_path, precision="fp32", bogus=1)
    assert not any(tmp_path.iterdir())


def test_ort_build_load_run(exported: tuple[nn.Module, Path], inputs: np.ndarray,
                            tmp_path: Path) -> None:
    model, source = exported
    backend = get_backend("onnxruntime")
    artifact = backend.build(source, tmp_path / "engine", precision="fp32")
    assert artifact == tmp_path / "engine" / "model.onnx"
    assert sorted(p.name for p in artifact.parent.iterdir()) == [
        "model.onnx", "model.optimized.onnx"]
    assert artifact.read_bytes() == source.read_bytes()
    with backend.load(artifact, threads=2) as runner:
        assert runner.threads == 2
        assert runner.input_name == "input"
        assert runner.session.get_session_options().intra_op_num_threads == 2
        out = runner.run(inputs.astype(np.float64))  # runner casts to float32
    np.testing.assert_allclose(out, torch_logits(model, inputs), atol=1e-4)


def test_missing_runtime_is_backend_unavailable(monkeypatch: pytest.MonkeyPatch,
                                                exported: tuple[nn.Module, Path]) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    backend = get_backend("onnxruntime")
    ok, reason = backend.availability()
    assert not ok and "edgecompress[onnx]" in reason
    with pytest.raises(BackendUnavailable, match=r"pip install 'edgecompress\[onnx\]'") as info:
        backend.load(exported[1])
    assert info.value.exit_code == 3


def test_import_does_not_load_runtimes() -> None:
    code = (
        "import sys, edgecompress.backends as b; "
        "b.get_backend('onnxruntime').validate('fp32', 2); "
        "assert 'onnxruntime' not in sys.modules, 'onnxruntime imported'; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_available_backend_matches_pytorch(
        name: str, exported: tuple[nn.Module, Path], inputs: np.ndarray,
        tmp_path: Path) -> None:
    backend = get_backend(name)
    ok, reason = backend.availability()
    if not ok:
        pytest.skip(f"{name} unavailable: {reason}")
    model, source = exported
    if backend.capabilities.artifact_suffixes[0] == ".tflite":  # TFLite converts from PyTorch
        from edgecompress.export.tflite import export_tflite

        source = export_tflite(model, torch.from_numpy(inputs[:1]), tmp_path / "m.tflite")
    artifact = backend.build(source, tmp_path / "engine", precision="fp32")
    with backend.load(artifact, threads=1) as runner:
        candidate = np.concatenate([runner.run(inputs[:1]), runner.run(inputs[1:])])
    result = compare_logits(torch_logits(model, inputs), candidate)
    assert result.max_abs_diff <= 1e-3
    assert result.top1_agreement == 1.0


class _TwoInputs(nn.Module):
    """Token ids (int64) and a mask, like a text encoder: masked mean of an embedding."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(20, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).float()
        return self.head((self.emb(input_ids) * mask).sum(1) / mask.sum(1))


def test_ort_runner_takes_a_multi_input_feed(tmp_path: Path) -> None:
    """Issue 12: the shared ORT runner serves text engines: a name -> array feed, each cast to
    its input's dtype; a missing input is named; an engine's own <file>.engine.json settings
    win over its folder's."""
    import json

    from edgecompress.backends.onnxruntime import _engine_info, engine_info_path
    from edgecompress.errors import ModelError

    model = _TwoInputs().eval()
    ids = torch.randint(0, 20, (3, 5))
    mask = torch.ones(3, 5, dtype=torch.long)
    mask[0, 3:] = 0
    path = tmp_path / "two.onnx"
    torch.onnx.export(model, (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
                      output_names=["logits"], dynamo=False)
    with get_backend("onnxruntime").load(path) as runner:
        got = runner.run({"attention_mask": mask.numpy().astype(np.int32),  # order, dtype
                          "input_ids": ids.numpy()})
        timed = runner.timed_call({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})()
        with pytest.raises(ModelError, match=r"missing \['attention_mask'\]"):
            runner.run({"input_ids": ids.numpy()})
    ref = model(ids, mask).detach().numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    np.testing.assert_allclose(timed[0], ref, atol=1e-5)
    (tmp_path / "engine.json").write_text(json.dumps({"disabled_optimizers": ["A"]}))
    assert _engine_info(path) == {"disabled_optimizers": ["A"]}
    engine_info_path(path).write_text(json.dumps({"disabled_optimizers": ["B"]}))
    assert engine_info_path(path).name == "two.onnx.engine.json"
    assert _engine_info(path) == {"disabled_optimizers": ["B"]}
