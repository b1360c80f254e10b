"""TFLite / LiteRT: conversion (FP32, PTQ and QAT INT8), the backend and its checks.

Needs the ``[tflite]`` extra (litert-torch + ai-edge-litert); each test skips naming the missing
package otherwise. ``test_qat_preset_fully_integer`` guards the torch 2.13 workarounds in
``edgecompress/quant/tflite.py``: it fails if litert-torch's QAT path breaks again.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecompress.errors import BackendUnavailable, ConfigError, ModelError
from edgecompress.models.tiny import build_builtin


def _need(module: str) -> None:
    pytest.importorskip(module, reason=f"{module} not installed (pip install "
                        "'edgecompress[tflite]')")


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn", reason="scikit-learn not installed (digits data)")
    from edgecompress.data import load_dataset

    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def student(digits):
    """The demo student (MobileNet-style w0.5 d1), trained briefly on digits."""
    torch.manual_seed(0)
    model = build_builtin("mobilenet", num_classes=10, in_channels=1, width=0.5, depth=1)
    x, y = torch.from_numpy(digits.train.x), torch.from_numpy(digits.train.y)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(3):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def ptq(student, digits, tmp_path_factory):
    """PTQ through the preset: (converted PyTorch int8 model, .tflite path)."""
    _need("litert_torch")
    _need("ai_edge_litert")
    from edgecompress.quant.tflite import TFLitePreset

    preset = TFLitePreset()
    example = torch.from_numpy(digits.train.x[:2])
    prepared = preset.prepare(copy.deepcopy(student), example, qat=False)
    with torch.no_grad():
        for i in range(0, 256, 64):
            prepared(torch.from_numpy(digits.train.x[i:i + 64]))
    converted = preset.convert(prepared)
    out = preset.export(converted, example, tmp_path_factory.mktemp("ptq") / "student.tflite")
    return converted, out


@pytest.fixture(scope="module")
def fp32_tflite(student, tmp_path_factory):
    _need("litert_torch")
    from edgecompress.export.tflite import export_tflite

    return export_tflite(student, torch.zeros(1, 1, 8, 8),
                         tmp_path_factory.mktemp("fp32") / "fp32.tflite")


@pytest.mark.parametrize("family", ["resnet", "mobilenet"])
def test_fp32_conversion_matches_pytorch(family, tmp_path):
    _need("litert_torch")
    _need("ai_edge_litert")
    from edgecompress.backends import get_backend
    from edgecompress.export.tflite import export_tflite, inspect_tflite

    torch.manual_seed(1)
    model = build_builtin(family, num_classes=10, in_channels=3, width=0.5, depth=1).eval()
    x = torch.randn(7, 3, 8, 8)
    path = export_tflite(model, x, tmp_path / "m.tflite")
    found = inspect_tflite(path)
    assert found.inputs[0]["shape"] == [1, 3, 8, 8]  # NCHW kept, static batch 1
    assert found.inputs[0]["dtype"] == "float32" and not found.fully_integer
    if family == "mobilenet":
        assert found.ops.get("DEPTHWISE_CONV_2D", 0) >= 3
    with get_backend("tflite").load(path, threads=1) as runner:
        got = runner.run(x.numpy())  # 7 samples through a batch-1 model: chunked
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_ptq_int8_fully_integer_and_agrees_with_pytorch(ptq, digits, student):
    from edgecompress.backends import get_backend

    converted, path = ptq
    backend = get_backend("tflite")
    info = backend.inspect(path, precision="int8")
    assert info["fully_integer"] and info["fp32_nodes"] == []
    assert info["int8_kernels"].get("CONV_2D", 0) >= 4
    assert info["int8_kernels"].get("FULLY_CONNECTED") == 1
    assert info["inputs"][0]["dtype"] == "int8"
    artifact = backend.build(path, path.parent / "engine", precision="int8")
    assert artifact.name == "model.tflite" and artifact.read_bytes() == path.read_bytes()
    with backend.load(artifact, threads=1) as runner:
        assert runner.xnnpack
        logits = runner.run(digits.test.x)
    with torch.no_grad():
        ref = converted(torch.from_numpy(digits.test.x)).numpy()
        fp32 = student(torch.from_numpy(digits.test.x)).numpy()
    agree = float(np.mean(logits.argmax(1) == ref.argmax(1)))
    acc_tfl = float(np.mean(logits.argmax(1) == digits.test.y))
    acc_fp32 = float(np.mean(fp32.argmax(1) == digits.test.y))
    assert agree >= 0.99, agree
    assert acc_tfl >= acc_fp32 - 0.03, (acc_tfl, acc_fp32)
    from edgecompress.errors import ParityError
    from edgecompress.export.tflite import check_tflite_parity

    parity = check_tflite_parity(path, ref, digits.test.x)
    assert parity["top1_agreement"] == pytest.approx(agree)
    with pytest.raises(ParityError, match="top-1 agreement") as info:
        check_tflite_parity(path, -ref, digits.test.x)  # argmax flipped to argmin
    assert info.value.exit_code == 5 and "not probed for .tflite" in str(info.value)
    # The qat stage's criteria: the accuracy difference vs the PyTorch int8 model is reported.
    parity = check_tflite_parity(path, ref, digits.test.x, min_top1_agreement=0.97,
                                 y=digits.test.y, max_metric_diff_pp=2.0)
    assert parity["metric_diff_pp"] == pytest.approx(100 * (acc_tfl - parity["reference_accuracy"]),
                                                     abs=1e-3)


def test_float_interface_keeps_integer_graph(ptq, digits, tmp_path):
    import shutil

    from edgecompress.backends import get_backend
    from edgecompress.export.tflite import inspect_tflite, set_float_io

    _, path = ptq
    float_io = tmp_path / "float_io.tflite"
    shutil.copyfile(path, float_io)
    set_float_io(float_io)
    found = inspect_tflite(float_io)
    assert found.inputs[0]["dtype"] == "float32" and found.outputs[0]["dtype"] == "float32"
    assert found.fully_integer and found.ops["QUANTIZE"] == 1 and found.ops["DEQUANTIZE"] == 1
    backend = get_backend("tflite")
    with backend.load(path) as a, backend.load(float_io) as b:
        x = digits.test.x[:20]
        np.testing.assert_allclose(a.run(x), b.run(x), atol=1e-6)


def test_qat_preset_fully_integer(digits, tmp_path):
    """prepare(qat=True) -> train -> convert -> export. Fails if either torch 2.13 workaround
    (pattern functions wrapped in a module; dynamic batch) stops working."""
    _need("litert_torch")
    _need("ai_edge_litert")
    from torchao.quantization.pt2e import (
        move_exported_model_to_eval,
        move_exported_model_to_train,
    )

    from edgecompress.export.tflite import inspect_tflite
    from edgecompress.quant.tflite import TFLitePreset

    torch.manual_seed(0)
    model = build_builtin("resnet", num_classes=10, in_channels=1, width=0.5, depth=1)
    preset = TFLitePreset()
    example = torch.from_numpy(digits.train.x[:1])  # batch 1: the guard case
    prepared = preset.prepare(model, example, qat=True)
    assert len(preset.layers["quantized"]) >= 7 and preset.layers["skipped"] == []
    move_exported_model_to_train(prepared)
    opt = torch.optim.SGD(prepared.parameters(), lr=0.01)
    x, y = torch.from_numpy(digits.train.x), torch.from_numpy(digits.train.y)
    for i in range(0, 96, 32):  # mini-batches of 32, not the traced batch
        loss = torch.nn.functional.cross_entropy(prepared(x[i:i + 32]), y[i:i + 32])
        opt.zero_grad()
        loss.backward()
        opt.step()
    fake_quant = [n for n, _ in prepared.named_modules() if "activation_post_process" in n]
    assert fake_quant, "QAT prepare inserted no fake-quant modules"
    move_exported_model_to_eval(prepared)
    converted = preset.convert(prepared)
    out = preset.export(converted, example, tmp_path / "qat.tflite")
    found = inspect_tflite(out)
    assert found.fully_integer, found.fp32_nodes
    assert found.int8_kernels.get("ADD", 0) >= 3  # residual adds stayed int8


def test_skip_keeps_layer_float_and_int8_build_rejects_it(student, digits, tmp_path):
    _need("litert_torch")
    _need("ai_edge_litert")
    from edgecompress.backends import get_backend
    from edgecompress.quant.tflite import TFLitePreset

    preset = TFLitePreset(calibration="minmax")
    example = torch.from_numpy(digits.train.x[:2])
    prepared = preset.prepare(copy.deepcopy(student), example, qat=False, skip=["classifier"])
    assert preset.layers["skipped"] == ["classifier"]
    with torch.no_grad():
        prepared(torch.from_numpy(digits.train.x[:64]))
    out = preset.export(preset.convert(prepared), example, tmp_path / "skip.tflite")
    backend = get_backend("tflite")
    with pytest.raises(ModelError, match="FULLY_CONNECTED"):
        backend.build(out, tmp_path / "engine", precision="int8")
    assert not (tmp_path / "engine" / "model.tflite").exists()
    built = backend.build(out, tmp_path / "engine", precision="int8", allow_float_ops=True)
    assert any(n.startswith("FULLY_CONNECTED") for n in
               backend.inspect(built, precision="int8")["fp32_nodes"])


def test_unknown_skip_name_is_a_config_error(student):
    _need("litert_torch")
    from edgecompress.quant.tflite import TFLitePreset

    with pytest.raises(ConfigError, match="'tflite'.*no_such_layer"):
        TFLitePreset().prepare(copy.deepcopy(student), torch.zeros(2, 1, 8, 8), qat=False,
                               skip=["no_such_layer"])


def test_float_model_rejected_for_int8(fp32_tflite, tmp_path):
    _need("ai_edge_litert")
    from edgecompress.backends import get_backend

    backend = get_backend("tflite")
    with pytest.raises(ModelError) as err:
        backend.build(fp32_tflite, tmp_path, precision="int8")
    msg = str(err.value)
    assert "not fully integer" in msg and "CONV_2D" in msg and "FULLY_CONNECTED" in msg
    assert backend.build(fp32_tflite, tmp_path, precision="fp32").is_file()
    # A float engine reports nothing to the int8 checks (like ONNX Runtime's fp32 engines);
    # the float ops are still visible as int8 inspection of the same file.
    assert backend.inspect(fp32_tflite, precision="fp32") == {}
    assert backend.inspect(fp32_tflite, precision="int8")["fully_integer"] is False


def test_build_rejects_bad_input(tmp_path):
    _need("ai_edge_litert")
    from edgecompress.backends import get_backend

    backend = get_backend("tflite")
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(ModelError, match="junk.tflite"):
        backend.build(junk, tmp_path / "out", precision="fp32")
    with pytest.raises(ConfigError, match=".tflite"):
        backend.build(tmp_path / "model.onnx", tmp_path / "out", precision="fp32")
    with pytest.raises(ConfigError, match="allow_float_ops"):
        backend.build(junk, tmp_path / "out", precision="fp32", allow_float_ops=True)


def test_missing_runtime_names_the_extra(monkeypatch, tmp_path):
    from edgecompress.backends import get_backend

    for name in ("ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime",
                 "tflite_runtime.interpreter"):
        monkeypatch.setitem(sys.modules, name, None)
    backend = get_backend("tflite")
    ok, why = backend.availability()
    assert not ok and "edgecompress[tflite]" in why
    with pytest.raises(BackendUnavailable, match=r"edgecompress\[tflite\]") as err:
        backend.load(tmp_path / "m.tflite")
    assert err.value.exit_code == 3


def test_missing_converter_names_the_extra(monkeypatch, tmp_path):
    from edgecompress.export.tflite import export_tflite

    monkeypatch.setitem(sys.modules, "litert_torch", None)
    model = build_builtin("resnet", num_classes=3, in_channels=1, width=0.25, depth=1)
    with pytest.raises(BackendUnavailable, match=r"litert_torch.*edgecompress\[tflite\]"):
        export_tflite(model, torch.zeros(1, 1, 8, 8), tmp_path / "m.tflite")
    assert not (tmp_path / "m.tflite").exists()


def test_latency_harness_and_bundled_tool_agree_roughly(ptq):
    _need("ai_edge_litert")
    from edgecompress.backends import get_backend
    from edgecompress.bench import benchmark_runner
    from edgecompress.bench.litert_benchmark import run_litert_benchmark

    _, path = ptq
    with get_backend("tflite").load(path, threads=1) as runner:
        x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
        measured = benchmark_runner(runner, x, None, warmup=5, runs=50)
    tool = run_litert_benchmark(path, threads=1, warmup=5, runs=50)
    assert tool["tool"] == "benchmark_litert_model" and tool["runs"] == 50
    assert measured["latency_ms"]["p50"] > 0 and tool["mean"] is not None
    assert tool["init_ms"] > 0


def test_import_edgecompress_does_not_import_tflite():
    code = ("import sys, edgecompress, edgecompress.backends, edgecompress.quant.presets; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('litert_torch', 'ai_edge_litert', 'tflite_runtime', 'jax')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


class _SiLUNet(torch.nn.Module):
    """Conv-BN-SiLU blocks with a squeeze-excitation gate (SiLU inside, sigmoid gate): the
    EfficientNet pattern litert-torch left in float before SiLU was decomposed."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.SiLU())
        self.body = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1),
                                  nn.BatchNorm2d(32), nn.SiLU())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(32, 8, 1), nn.SiLU(),
                                nn.Conv2d(8, 32, 1), nn.Sigmoid())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x):
        x = self.body(self.stem(x))
        return self.head(x * self.se(x))


def test_silu_networks_convert_fully_integer_and_agree(digits, tmp_path):
    _need("litert_torch")
    _need("ai_edge_litert")
    from edgecompress.backends import get_backend
    from edgecompress.quant.tflite import TFLitePreset

    torch.manual_seed(0)
    model = _SiLUNet()
    x, y = torch.from_numpy(digits.train.x), torch.from_numpy(digits.train.y)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(3):
        for i in range(0, len(x), 64):
            loss = torch.nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    preset = TFLitePreset()
    example = x[:2]
    prepared = preset.prepare(copy.deepcopy(model), example, qat=False)
    with torch.no_grad():
        for i in range(0, 256, 64):
            prepared(x[i:i + 64])
    converted = preset.convert(prepared)
    path = preset.export(converted, example, tmp_path / "silu.tflite")
    info = get_backend("tflite").inspect(path, precision="int8")
    assert info["fully_integer"] and info["fp32_nodes"] == [] and preset.float_ops == []
    assert info["int8_kernels"].get("LOGISTIC", 0) >= 4  # 3 SiLU + the SE gate
    assert info["int8_kernels"].get("MUL", 0) >= 4
    with get_backend("tflite").load(path, threads=1) as runner:
        logits = runner.run(digits.test.x)
    with torch.no_grad():
        ref = converted(torch.from_numpy(digits.test.x)).numpy()
        fp32 = model(torch.from_numpy(digits.test.x)).numpy()
    assert float(np.mean(logits.argmax(1) == ref.argmax(1))) >= 0.97
    acc_int8 = float(np.mean(logits.argmax(1) == digits.test.y))
    assert acc_int8 >= float(np.mean(fp32.argmax(1) == digits.test.y)) - 0.03
