"""Tests for edgecompress.export: dynamo ONNX export and PyTorch/ORT parity."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx.external_data_helper import uses_external_data
from torch import nn

from edgecompress.errors import ConfigError, ModelError, ParityError
from edgecompress.export import ParityResult, check_parity, compare_logits, export_onnx

CLASSES = 5


def tiny_classifier() -> nn.Sequential:
    """Conv-BN-ReLU-pool-Linear: the op mix every built-in student uses."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, CLASSES),
    )
    # Non-trivial BN statistics so eval-mode folding is actually exercised.
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    model = tiny_classifier()
    out_dir = tmp_path_factory.mktemp("export")
    path = export_onnx(model, torch.randn(2, 1, 8, 8), out_dir / "model.onnx")
    return model, path


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((40, 1, 8, 8)).astype(np.float32)


def test_export_writes_single_checked_file(exported: tuple[nn.Module, Path]) -> None:
    _, path = exported
    assert path.name == "model.onnx"
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]  # no tmp, no sidecar
    proto = onnx.load(str(path), load_external_data=False)
    assert not any(uses_external_data(t) for t in proto.graph.initializer)
    onnx.checker.check_model(str(path), full_check=True)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) >= 18


@pytest.mark.parametrize("batch", [1, 7])
def test_dynamic_batch(exported: tuple[nn.Module, Path], batch: int) -> None:
    model, path = exported
    x = np.random.default_rng(batch).standard_normal((batch, 1, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input": x})
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert out.shape == (batch, CLASSES)
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_export_keeps_training_mode(tmp_path: Path) -> None:
    model = tiny_classifier().train()
    export_onnx(model, torch.randn(1, 1, 8, 8), tmp_path / "m.onnx", dynamic_batch=False)
    assert model.training
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 1, 8, 8]


def test_parity_passes(exported: tuple[nn.Module, Path], inputs: np.ndarray) -> None:
    model, path = exported
    result = check_parity(model, path, inputs, batch_size=16)
    assert isinstance(result, ParityResult)
    assert result.samples == len(inputs)
    assert result.max_abs_diff <= 1e-3
    assert result.top1_agreement == 1.0
    assert set(result.to_dict()) == {"max_abs_diff", "mean_abs_diff", "top1_agreement",
                                     "samples"}


def test_parity_reports_every_failure(exported: tuple[nn.Module, Path],
                                      inputs: np.ndarray) -> None:
    model, path = exported
    drifted = copy.deepcopy(model)
    with torch.no_grad():  # planted mismatch: weights changed after export
        drifted[-1].weight.copy_(torch.randn_like(drifted[-1].weight) * 10)
        drifted[-1].bias.copy_(torch.randn_like(drifted[-1].bias) * 10)
    with pytest.raises(ParityError) as info:
        check_parity(drifted, path, inputs)
    message = str(info.value)
    assert "max abs diff" in message and "> atol" in message
    assert "top-1 agreement" in message and "< required" in message


def test_parity_reports_shape_mismatch(exported: tuple[nn.Module, Path],
                                       inputs: np.ndarray) -> None:
    _, path = exported
    wrong = nn.Sequential(nn.Flatten(), nn.Linear(64, CLASSES + 1))
    with pytest.raises(ParityError, match="output shape mismatch"):
        check_parity(wrong, path, inputs)


def test_compare_logits_flags_nan() -> None:
    ref = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    result = compare_logits(ref, ref.copy())
    assert result == ParityResult(0.0, 0.0, 1.0, 2)
    bad = ref.copy()
    bad[0, 0] = np.nan
    assert np.isnan(compare_logits(ref, bad).max_abs_diff)
    with pytest.raises(ParityError, match="shapes differ"):
        compare_logits(ref, ref[:1])


def test_opset_below_18_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="opset 17"):
        export_onnx(tiny_classifier(), torch.randn(1, 1, 8, 8), tmp_path / "m.onnx", opset=17)
    assert not any(tmp_path.iterdir())


class DataDependent(nn.Module):
    """Python control flow on tensor values cannot be captured by torch.export."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x
        return -x


def test_export_failure_is_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as info:
        export_onnx(DataDependent(), torch.randn(1, 1, 8, 8), tmp_path / "m.onnx")
    message = str(info.value)
    assert message.startswith("cannot export DataDependent to ONNX:")
    assert "\n" not in message and "\x1b" not in message
    assert not any(tmp_path.iterdir())
