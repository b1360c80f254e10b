"""INT8: presets, the ORT int8 engine (every conv/linear an int8 kernel), the uint8 rewrite,
calibration methods, sensitivity, and the gate failing on an FP32 fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("torchao")
pytest.importorskip("onnxruntime")

from edgecompress.backends import get_backend  # noqa: E402
from edgecompress.errors import ConfigError, ModelError  # noqa: E402
from edgecompress.gate import judge  # noqa: E402
from edgecompress.models.tiny import build_builtin  # noqa: E402
from edgecompress.quant.presets import get_preset, preset_for_target  # noqa: E402
from edgecompress.quant.training import calibrate, predict  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images.astype(np.float32) / 16.0)[:, None]
    return x, data.target.astype(np.int64)


def _model(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_builtin(family, num_classes=10, in_channels=1, width=0.5, depth=1).eval()


def _conv_linear_count(model: torch.nn.Module) -> int:
    return sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())


def _ptq(preset_name: str, model, x, path, skip=(), **options):
    preset = get_preset(preset_name, **options)
    prepared = preset.prepare(model, torch.from_numpy(x[:2]), qat=False, skip=skip)
    calibrate(prepared, x[:128])
    converted = preset.convert(prepared)
    preset.export(converted, torch.from_numpy(x[:2]), path)
    return preset, converted


@pytest.mark.parametrize("family", ["resnet", "mobilenet"])
def test_every_conv_and_linear_runs_as_an_int8_kernel(tmp_path, digits, family):
    x, _ = digits
    model = _model(family)
    _, converted = _ptq("ort-x86", model, x, tmp_path / "q.onnx")
    backend = get_backend("onnxruntime")
    artifact = backend.build(tmp_path / "q.onnx", tmp_path / "engine", precision="int8")
    info = backend.inspect(artifact, precision="int8")
    kernels = info["int8_kernels"]
    # ResNet/MobileNet: every Conv2d becomes QLinearConv, the classifier QGemm.
    assert kernels.get("QLinearConv", 0) + kernels.get("QGemm", 0) == _conv_linear_count(model)
    assert info["fp32_nodes"] == []
    with backend.load(artifact) as runner:
        out = runner.run(x[:64])
    reference = predict(converted, x[:64])
    assert (out.argmax(1) == reference.argmax(1)).mean() >= 0.98
    # Metadata stripped: the engine is mostly weights (1 byte each), not exporter stack traces.
    params = sum(p.numel() for p in model.parameters())
    assert artifact.stat().st_size < 2.5 * params + 20_000


def test_uint8_rewrite_is_exact_and_restores_fusion(tmp_path, digits):
    import onnx
    import onnxruntime as ort

    from edgecompress.quant.onnx_passes import activation_dtypes, rewrite_int8_activations_to_uint8

    x, _ = digits
    _ptq("tensorrt", _model("mobilenet"), x, tmp_path / "trt.onnx")
    model = onnx.load(str(tmp_path / "trt.onnx"))
    assert set(activation_dtypes(model)) == {"int8"}  # symmetric signed activations
    rewritten = rewrite_int8_activations_to_uint8(model)
    assert rewritten > 0 and set(activation_dtypes(model)) == {"uint8"}
    onnx.save(model, str(tmp_path / "u8.onnx"))

    def run(path):
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return sess.run(None, {sess.get_inputs()[0].name: x[:100]})[0]

    np.testing.assert_array_equal(run(tmp_path / "trt.onnx"), run(tmp_path / "u8.onnx"))


def test_gate_fails_when_a_layer_stays_fp32(tmp_path, digits):
    x, _ = digits
    _ptq("ort-x86", _model("resnet"), x, tmp_path / "q.onnx", skip=["stage2.0.conv1"])
    backend = get_backend("onnxruntime")
    artifact = backend.build(tmp_path / "q.onnx", tmp_path / "engine", precision="int8")
    info = backend.inspect(artifact, precision="int8")
    assert len(info["fp32_nodes"]) == 1, info  # named, never silent
    entry = {"name": "cpu-int8", "status": "ok", "accuracy": 0.9, "teacher_accuracy": 0.9,
             "accuracy_drop": 0.0, "latency_ms": {"p50": 1.0, "p90": 1.0}, **info}
    gate = judge([entry], {"no_fp32_fallback": True})
    assert gate["passed"] is False
    assert any("fp32" in v.lower() or "FP32" in v for v in gate["violations"])
    assert judge([{**entry, "fp32_nodes": []}], {"no_fp32_fallback": True})["passed"] is True


def test_float_model_is_refused_as_int8_engine(tmp_path, digits):
    from edgecompress.export import export_onnx

    x, _ = digits
    export_onnx(_model("resnet"), torch.from_numpy(x[:2]), tmp_path / "fp32.onnx")
    with pytest.raises(ModelError, match="QuantizeLinear"):
        get_backend("onnxruntime").build(tmp_path / "fp32.onnx", tmp_path / "e", precision="int8")


def test_unknown_fp32_layer_name_is_an_error(digits):
    x, _ = digits
    preset = get_preset("ort-x86")
    with pytest.raises(ConfigError, match="stage9.conv"):
        preset.prepare(_model("resnet"), torch.from_numpy(x[:2]), qat=False, skip=["stage9.conv"])


def test_preset_backend_compatibility():
    from edgecompress.isa import cpu_info

    here = "ort-x86-avx2" if cpu_info().int8_saturates else "ort-x86-vnni"
    if cpu_info().isa.startswith("arm64"):
        here = "ort-arm64"
    assert preset_for_target("onnxruntime", None) == here
    assert preset_for_target("onnxruntime", "ort-x86") == here
    assert preset_for_target("onnxruntime", None, "avx2") == "ort-x86-avx2"
    assert preset_for_target("onnxruntime", None, "avx512") == "ort-x86-avx2"
    assert preset_for_target("onnxruntime", None, "avx512-vnni") == "ort-x86-vnni"
    assert preset_for_target("onnxruntime", None, "avx-vnni") == "ort-x86-vnni"
    assert preset_for_target("onnxruntime", None, "arm64-dotprod") == "ort-arm64"
    assert preset_for_target("onnxruntime", "ort-x86-vnni", "avx2") == "ort-x86-vnni"
    assert preset_for_target("onnxruntime", "tensorrt") == "tensorrt"
    with pytest.raises(ConfigError, match="'tflite'.*'onnxruntime'"):
        preset_for_target("onnxruntime", "tflite")
    with pytest.raises(ConfigError, match="unknown quantization preset"):
        preset_for_target("onnxruntime", "nope")


def test_calibration_methods_clip_outliers():
    from edgecompress.quant.observers import entropy_threshold

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0, 1, 200_000), [60.0, -55.0]]).astype(np.float32)
    t = entropy_threshold(values)
    assert 2.0 < t < 30.0  # ignores the two outliers, keeps the bulk of the gaussian
    from torchao.quantization.pt2e import MinMaxObserver

    from edgecompress.quant.observers import make_distribution_observer

    obs_cls = make_distribution_observer(MinMaxObserver)
    mm = MinMaxObserver(dtype=torch.uint8, quant_min=0, quant_max=255)
    pct = obs_cls(method="percentile", percentile=99.9, dtype=torch.uint8, quant_min=0,
                  quant_max=255)
    ent = obs_cls(method="entropy", dtype=torch.uint8, quant_min=0, quant_max=255)
    data = torch.from_numpy(values)
    for obs in (mm, pct, ent):
        for chunk in data.split(50_000):
            obs(chunk)
    s_mm, s_pct, s_ent = (float(o.calculate_qparams()[0]) for o in (mm, pct, ent))
    assert s_pct < s_mm / 5 and s_ent < s_mm / 2


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_ptq_methods_keep_accuracy(tmp_path, digits, method):
    from edgecompress.distributed import DistInfo
    from edgecompress.training import train

    x, y = digits
    model = _model("mobilenet")

    def loss_fn(m, xb, yb, idx):
        return torch.nn.functional.cross_entropy(m(xb), yb)

    train(model, model, loss_fn, x_train=x[:1200], y_train=y[:1200], x_val=x[1200:1400],
          y_val=y[1200:1400], epochs=3, lr=0.01, weight_decay=0.0, batch_size=64, patience=3,
          seed=0, dist_info=DistInfo(0, 1, 0, torch.device("cpu")), desc="fit")
    model.eval()
    fp32 = (model(torch.from_numpy(x[1400:])).argmax(1).numpy() == y[1400:]).mean()
    _, converted = _ptq("ort-x86", model, x, tmp_path / "q.onnx", calibration=method)
    int8 = (predict(converted, x[1400:]).argmax(1) == y[1400:]).mean()
    assert fp32 > 0.8
    assert int8 >= fp32 - 0.05


def test_sensitivity_ranks_every_layer(digits):
    from edgecompress.quant.sensitivity import layer_sensitivity

    x, y = digits
    model = _model("resnet")
    entries = layer_sensitivity(get_preset("ort-x86"), model, example=torch.from_numpy(x[:2]),
                                calibration=x[:64], x_val=x[1500:1600], y_val=y[1500:1600])
    assert len(entries) == _conv_linear_count(model)
    keys = [(-e["accuracy_drop_pp"], -e["logit_mse"]) for e in entries]
    assert keys == sorted(keys)
    assert all(e["logit_mse"] >= 0 for e in entries)
