"""TensorRT backend: what runs without TensorRT (options, cache key, FP16 pass, errors) always;
building and running a real engine only where TensorRT and a CUDA GPU exist."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from edgecompress.backends import BACKENDS, get_backend
from edgecompress.backends.tensorrt import cache_key, to_fp16
from edgecompress.errors import BackendUnavailable, ConfigError, ModelError
from edgecompress.targets import load_profile, profile_availability
from tests.conftest import REPO, run_cli

onnx = pytest.importorskip("onnx", reason="needs onnx")

HAVE_TRT, WHY_NOT = get_backend("tensorrt").availability()


def _tiny_onnx(path, opset=18):
    import torch

    from edgecompress.export.onnx import export_onnx
    from edgecompress.models.tiny import build_builtin

    torch.manual_seed(0)
    model = build_builtin("resnet", num_classes=10, in_channels=1, width=0.25, depth=1)
    return export_onnx(model, torch.randn(2, 1, 8, 8), path, opset=opset)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    return _tiny_onnx(tmp_path_factory.mktemp("trt") / "tiny.onnx")


def test_registered_and_declares_on_device_builds():
    cls = BACKENDS["tensorrt"]
    assert cls.extra == "tensorrt" and cls.builds_on_device is True
    assert cls.capabilities.precisions == ("fp32", "fp16", "int8")


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_missing_tensorrt_names_what_to_install(tiny_onnx, tmp_path):
    assert "TensorRT" in WHY_NOT and "Dockerfile.jetson" in WHY_NOT
    assert "edgecompress[tensorrt]" in WHY_NOT
    with pytest.raises(BackendUnavailable) as info:
        get_backend("tensorrt").build(tiny_onnx, tmp_path, precision="fp16")
    assert info.value.exit_code == 3
    with pytest.raises(BackendUnavailable):
        get_backend("tensorrt").load(tmp_path / "model.engine")


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_bench_cli_exits_3_without_tensorrt(tmp_path, tiny_onnx):
    profile = tmp_path / "trt.yaml"
    profile.write_text(yaml.safe_dump({"version": 1, "name": "trt-local", "backend": "tensorrt",
                                       "precision": "fp16"}))
    result = run_cli("bench", str(tiny_onnx), "--target", str(profile), "--out",
                     str(tmp_path / "out"))
    assert result.returncode == 3, result.stderr
    assert "TensorRT" in result.stderr and "Dockerfile.jetson" in result.stderr
    assert not (tmp_path / "out").exists()


def test_build_options_are_validated_without_tensorrt():
    trt = get_backend("tensorrt")
    trt.check_build_options("int8", {"dla_core": 0, "gpu_fallback": True, "workspace_mb": 512,
                                     "max_batch": 64, "sequence_length": 128})
    with pytest.raises(ConfigError, match="sequence_length"):
        trt.check_build_options("int8", {"sequence_length": 0})
    with pytest.raises(ConfigError, match="unknown option.*dla_cores"):
        trt.check_build_options("int8", {"dla_cores": 1})
    with pytest.raises(ConfigError, match="dla_core"):
        trt.check_build_options("int8", {"dla_core": True})
    with pytest.raises(ConfigError, match="DLA runs fp16 or int8"):
        trt.check_build_options("fp32", {"dla_core": 0})
    with pytest.raises(ConfigError, match="max_batch"):
        trt.check_build_options("fp16", {"max_batch": 0})
    with pytest.raises(ConfigError, match="precision 'int4'"):
        trt.check_build_options("int4", {})
    with pytest.raises(ConfigError, match="thread count"):
        trt.validate("fp16", 4)
    with pytest.raises(ConfigError, match=r"\.engine, \.plan, \.onnx"):
        trt.load("model.tflite")


def test_int8_build_needs_a_tensorrt_qdq_model(tiny_onnx, tmp_path):
    # The lint runs before TensorRT is even imported: a float model is refused for int8.
    with pytest.raises(ModelError, match="no-qdq"):
        get_backend("tensorrt").build(tiny_onnx, tmp_path, precision="int8")


def test_cache_key_covers_what_changes_the_engine():
    base = dict(precision="int8", options={"dla_core": None}, tensorrt_version="10.3.0",
                device_name="Orin")
    key = cache_key("a" * 64, **base)
    assert key == cache_key("a" * 64, **{**base, "options": {"dla_core": None,
                                                             "cache_dir": "/elsewhere"}})
    changed = [cache_key("b" * 64, **base), cache_key("a" * 64, **{**base, "precision": "fp16"}),
               cache_key("a" * 64, **{**base, "options": {"dla_core": 0}}),
               cache_key("a" * 64, **{**base, "tensorrt_version": "10.7.0"}),
               cache_key("a" * 64, **{**base, "device_name": "NVIDIA H100"})]
    assert len({key, *changed}) == 6


def test_fp16_pass_keeps_io_float32_and_outputs(tiny_onnx):
    ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime")
    model = onnx.load(str(tiny_onnx))
    half = to_fp16(model)
    onnx.checker.check_model(half, full_check=True)
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert half.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert all(i.data_type != onnx.TensorProto.FLOAT for i in half.graph.initializer)
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {
        model.graph.input[0].name: x})[0]
    try:
        sess = ort.InferenceSession(half.SerializeToString())
    except Exception as err:  # noqa: BLE001 - a CPU build may lack an fp16 kernel
        pytest.skip(f"onnxruntime cannot run this fp16 model on CPU: {err}")
    out = sess.run(None, {half.graph.input[0].name: x})[0]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=0.05, rtol=0.05)


def test_fp16_pass_refuses_qdq_below_opset_19():
    from tests.test_trt_lint import qdq_conv_model

    with pytest.raises(ModelError, match="opset >= 19"):
        to_fp16(qdq_conv_model())


def test_jetson_profiles_need_no_local_tensorrt():
    for name in ("jetson-orin-nano", "jetson-agx-orin"):
        profile = load_profile(name)
        assert profile.backend == "tensorrt" and profile.precision == "int8"
        assert profile.connection.kind == "ssh" and profile.threads == 1
        get_backend("tensorrt").check_build_options(profile.precision, profile.build_options)
        ok, reasons = profile_availability(profile)
        assert not any("runtime missing" in r for r in reasons)  # built on the board
        assert (REPO / "targets" / f"{name}.yaml").is_file()


@pytest.mark.skipif(not HAVE_TRT, reason=f"TensorRT not usable here: {WHY_NOT[:200]}")
def test_real_engine_matches_onnxruntime(tiny_onnx, tmp_path):
    """Where TensorRT and a GPU exist (a Jetson, the Dockerfile.jetson image)."""
    trt = get_backend("tensorrt")
    engine = trt.build(tiny_onnx, tmp_path / "e", precision="fp16",
                       cache_dir=str(tmp_path / "cache"))
    again = trt.build(tiny_onnx, tmp_path / "e2", precision="fp16",
                      cache_dir=str(tmp_path / "cache"))
    assert engine.read_bytes() == again.read_bytes()
    x = np.random.default_rng(0).standard_normal((300, 1, 8, 8)).astype(np.float32)
    with trt.load(engine) as runner, get_backend("onnxruntime").load(tiny_onnx) as ref:
        np.testing.assert_allclose(runner.run(x), ref.run(x), atol=0.05, rtol=0.05)
        call = runner.timed_call(x[:1])
        for _ in range(5):
            call()
        assert len(runner.event_times_ms) == 5 and min(runner.event_times_ms) > 0


def test_token_inputs_get_a_profile_at_the_sequence_length():
    """A text encoder's ids and mask are (batch, sequence), both dynamic in the export: the
    optimization profile keeps the batch dynamic and fixes the sequence at the target's
    seq_len; without it the dynamic sequence is refused, naming the option. (TensorRT's
    network and profile objects are stood in for: the shape logic is ours.)"""
    from types import SimpleNamespace

    from edgecompress.backends.tensorrt import TensorRTBackend

    calls = []
    profile = SimpleNamespace(set_shape=lambda name, *shapes: calls.append((name, shapes)))
    builder = SimpleNamespace(create_optimization_profile=lambda: profile)
    config = SimpleNamespace(add_optimization_profile=lambda p: calls.append(("added", p)))
    inputs = [SimpleNamespace(name="input_ids", shape=(-1, -1)),
              SimpleNamespace(name="attention_mask", shape=(-1, -1))]
    network = SimpleNamespace(num_inputs=2, get_input=lambda i: inputs[i])
    TensorRTBackend._add_profile(None, builder, network, config, 8, 24)
    assert calls == [("input_ids", ([1, 24], [1, 24], [8, 24])),
                     ("attention_mask", ([1, 24], [1, 24], [8, 24])), ("added", profile)]
    with pytest.raises(ModelError, match="sequence_length"):
        TensorRTBackend._add_profile(None, builder, network, config, 8, None)


@pytest.mark.skipif(not HAVE_TRT, reason=f"TensorRT not usable here: {WHY_NOT[:200]}")
def test_real_engine_takes_token_ids_and_mask(tmp_path):
    """Where TensorRT and a GPU exist: a two-input token model, built for sequence length 5,
    computes what ONNX Runtime computes from a name -> array feed."""
    import torch

    from tests.test_backends import _TwoInputs

    model = _TwoInputs().eval()
    ids = torch.randint(0, 20, (6, 5))
    mask = torch.ones(6, 5, dtype=torch.long)
    path = tmp_path / "two.onnx"
    torch.onnx.export(model, (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
                      output_names=["logits"], dynamo=False,
                      dynamic_axes={"input_ids": {0: "b", 1: "s"},
                                    "attention_mask": {0: "b", 1: "s"}})
    trt = get_backend("tensorrt")
    engine = trt.build(path, tmp_path / "e", precision="fp32", sequence_length=5,
                       cache_dir=str(tmp_path / "cache"))
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    with trt.load(engine) as runner, get_backend("onnxruntime").load(path) as ref:
        assert runner.input_shape == (-1, 5)
        np.testing.assert_allclose(runner.run(feed), ref.run(feed), atol=1e-3, rtol=1e-3)
