"""TensorRT-compatibility lint: our `tensorrt` export passes, planted bad Q/DQ models fail."""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the lint reads ONNX models (pip install onnx)")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgecompress.errors import ModelError  # noqa: E402
from edgecompress.quant.trt_lint import check_tensorrt_compat, lint_tensorrt  # noqa: E402
from tests.conftest import run_cli  # noqa: E402


def _init(name: str, arr: np.ndarray):
    return numpy_helper.from_array(np.asarray(arr), name)


def qdq_conv_model(*, act_zp: int = 0, act_dtype=np.int8, weight_scales: int = 4,
                   weight_axis: int = 0, int32_bias: bool = False, extra_op: str | None = None,
                   opset: int = 18):
    """x -> Q/DQ -> Conv(DQ(int8 weight), bias) -> out: what TensorRT's explicit quantization
    wants, unless a keyword plants a violation."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, size=(4, 1, 3, 3)).astype(np.int8)
    w_scale = np.full((weight_scales,), 0.01, np.float32) if weight_scales > 1 \
        else np.array(0.01, np.float32)
    inits = [
        _init("a_scale", np.array(0.05, np.float32)),
        _init("a_zp", np.array(act_zp, act_dtype)),
        _init("w_q", w), _init("w_scale", w_scale),
        _init("w_zp", np.zeros(w_scale.shape, np.int8)),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "a_scale", "a_zp"], ["x_q"], name="q_in"),
        helper.make_node("DequantizeLinear", ["x_q", "a_scale", "a_zp"], ["x_dq"], name="dq_in"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], name="dq_w",
                         axis=weight_axis),
    ]
    if int32_bias:
        inits += [_init("b_q", np.arange(4, dtype=np.int32)),
                  _init("b_scale", np.full((4,), 0.0005, np.float32))]
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_scale"], ["b"],
                                      name="dq_bias", axis=0))
    else:
        inits.append(_init("b", np.zeros(4, np.float32)))
    conv_out = "y" if extra_op is None else "conv"
    nodes.append(helper.make_node("Conv", ["x_dq", "w_dq", "b"], [conv_out], name="conv",
                                  pads=[1, 1, 1, 1]))
    y_shape = [1, 4, 8, 8] if extra_op is None else ["u"]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)]
    if extra_op is not None:
        nodes.append(helper.make_node(extra_op, ["conv"], ["y"], name="odd"))
    graph = helper.make_graph(nodes, "planted", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 1, 8, 8])], outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _rules(model) -> set[str]:
    return {f.rule for f in lint_tensorrt(model).findings}


def test_clean_qdq_model_passes():
    result = lint_tensorrt(qdq_conv_model(), require_qdq=True)
    assert result.passed, result.findings
    assert result.qdq_nodes == 3 and result.opset == 18


@pytest.mark.parametrize(("planted", "rule"), [
    ({"act_zp": 3}, "zero-point"),
    ({"act_zp": 128, "act_dtype": np.uint8}, "dtype"),
    ({"int32_bias": True}, "int32-bias"),
    ({"weight_scales": 1}, "weight-per-tensor"),
    ({"weight_axis": 1, "weight_scales": 1}, "weight-per-tensor"),
    ({"extra_op": "Unique"}, "unsupported-op"),
    ({"opset": 21}, "opset"),
])
def test_planted_violations_fail(planted, rule):
    assert rule in _rules(qdq_conv_model(**planted))


def test_weight_scales_on_wrong_axis_fail():
    # 4 scales on axis 1 of a [4, 1, 3, 3] weight: wrong axis (and wrong count).
    model = qdq_conv_model()
    for node in model.graph.node:
        if node.name == "dq_w":
            node.attribute[0].i = 1
    assert "weight-axis" in _rules(model)


def test_per_channel_activation_fails():
    model = qdq_conv_model()
    for i, init in enumerate(model.graph.initializer):
        if init.name == "a_scale":
            model.graph.initializer[i].CopyFrom(_init("a_scale", np.full((1,), 0.05, np.float32)))
    assert lint_tensorrt(model).passed  # one scale in a 1-element tensor is still per tensor
    for node in model.graph.node:
        if node.name in ("q_in", "dq_in"):
            node.attribute.extend([helper.make_attribute("axis", 1)])
    for i, init in enumerate(model.graph.initializer):
        if init.name == "a_scale":
            model.graph.initializer[i].CopyFrom(_init("a_scale", np.full((1,), 0.05, np.float32)))
    model.graph.initializer.extend([_init("a_scale3", np.full((3,), 0.05, np.float32))])
    model.graph.node[0].input[1] = "a_scale3"
    assert "activation-per-channel" in _rules(model)


def test_check_raises_with_every_finding(tmp_path):
    model = qdq_conv_model(act_zp=5, int32_bias=True)
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError) as info:
        check_tensorrt_compat(path)
    text = str(info.value)
    assert "bad.onnx" in text and "[zero-point]" in text and "[int32-bias]" in text
    assert info.value.exit_code == 2


def test_no_qdq_is_a_finding_only_when_required():
    model = qdq_conv_model()
    plain = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    plain_model = helper.make_model(plain, opset_imports=[helper.make_opsetid("", 18)])
    assert lint_tensorrt(plain_model).passed
    assert {f.rule for f in lint_tensorrt(plain_model, require_qdq=True).findings} == {"no-qdq"}
    assert lint_tensorrt(model, require_qdq=True).passed


def test_lint_cli_exit_codes(tmp_path):
    good, bad = tmp_path / "good.onnx", tmp_path / "bad model.onnx"
    onnx.save(qdq_conv_model(), str(good))
    onnx.save(qdq_conv_model(act_zp=7), str(bad))
    ok = run_cli("lint", str(good), "--for", "tensorrt")
    assert ok.returncode == 0 and "PASSED" in ok.stdout
    failed = run_cli("lint", str(bad), "--json")
    assert failed.returncode == 2
    assert {f["rule"] for f in json.loads(failed.stdout)["findings"]} == {"zero-point"}
    missing = run_cli("lint", str(tmp_path / "nope.onnx"))
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_our_tensorrt_export_passes(tmp_path):
    """The `tensorrt` preset's export (tiny model, PTQ with two calibration batches) is what
    TensorRT accepts."""
    presets = pytest.importorskip("edgecompress.quant.presets",
                                  reason="the tensorrt quantization preset is not available")
    import torch

    from edgecompress.models.tiny import build_builtin

    preset = presets.get_preset("tensorrt")
    ok, why = preset.availability()
    if not ok:
        pytest.skip(f"tensorrt preset unavailable: {why}")
    torch.manual_seed(0)
    model = build_builtin("resnet", num_classes=10, in_channels=1, width=0.25, depth=1).eval()
    example = torch.randn(4, 1, 8, 8)
    prepared = preset.prepare(model, example, qat=False)
    with torch.no_grad():
        for _ in range(2):
            prepared(torch.randn(16, 1, 8, 8))
    converted = preset.convert(prepared)
    path = preset.export(converted, example, tmp_path / "student.tensorrt.onnx")
    result = lint_tensorrt(path, require_qdq=True)
    assert result.qdq_nodes > 0
    assert result.passed, "\n".join(str(f) for f in result.findings)
