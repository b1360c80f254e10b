"""Input-channel padding of int8 convs (quant.channel_pad) and the ORT build's measured choice
(backends.ort_profile): exact, and kept only where ORT's profiler says it is faster."""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgecompress.backends.ort_profile import (  # noqa: E402
    example_feed,
    faster_padding,
    node_time,
)
from edgecompress.quant.channel_pad import (  # noqa: E402
    PaddedConv,
    pad_candidates,
    pad_conv_input_channels,
)


def qdq_conv_model(channels: int = 3, out: int = 16, kernel: int = 3, group: int = 1,
                   uint8_weights: bool = False, size: int = 20, batch: object = "N") -> object:
    """x -> Q(u8) -> DQ -> Conv(DQ(int8 per-channel W), bias) -> Q -> DQ -> y."""
    rng = np.random.default_rng(0)
    w = rng.integers(-63, 64, (out, channels // group, kernel, kernel)).astype(np.int8)
    w_zero = np.zeros(out, np.int8)
    if uint8_weights:  # what the no-VNNI wide-weight rewrite makes: codes and zero point + 128
        w, w_zero = (w.astype(np.int16) + 128).astype(np.uint8), np.full(out, 128, np.uint8)
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
        numpy_helper.from_array(np.array(7, np.uint8), "xz"),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(rng.uniform(0.001, 0.01, out).astype(np.float32), "ws"),
        numpy_helper.from_array(w_zero, "wz"),
        numpy_helper.from_array(rng.normal(0, 0.1, out).astype(np.float32), "b"),
        numpy_helper.from_array(np.array(0.05, np.float32), "ys"),
        numpy_helper.from_array(np.array(120, np.uint8), "yz"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="qx"),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="dqx"),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="dqw", axis=0),
        helper.make_node("Conv", ["xd", "wd", "b"], ["c"], name="stem", pads=[1, 1, 1, 1],
                         group=group),
        helper.make_node("QuantizeLinear", ["c", "ys", "yz"], ["cq"], name="qc"),
        helper.make_node("DequantizeLinear", ["cq", "ys", "yz"], ["y"], name="dqc"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, out, size, size])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model


def run(model: object, x: np.ndarray, *, fused: bool = True) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    if not fused:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("channels", [1, 3, 6])
@pytest.mark.parametrize("uint8_weights", [False, True])
def test_padding_is_exact_fused_and_unfused(channels: int, uint8_weights: bool) -> None:
    model = qdq_conv_model(channels, uint8_weights=uint8_weights)
    x = np.random.default_rng(1).uniform(-2, 4, (2, channels, 20, 20)).astype(np.float32)
    before = {fused: run(model, x, fused=fused) for fused in (True, False)}
    padded = pad_conv_input_channels(model)
    onnx.checker.check_model(model)
    want = channels + (-channels % 4)
    assert padded == [PaddedConv(conv="stem", channels=channels, padded_to=want,
                                 pad_node="stem_chanpad")]
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    new_w = next(v for k, v in weights.items() if k.startswith("w_"))
    assert new_w.shape[1] == want
    # the added channels hold the weight zero point: 0 for int8, 128 for the uint8 rewrite
    assert (new_w[:, channels:] == (128 if uint8_weights else 0)).all()
    assert "w" not in weights and "dqx" not in {n.name for n in model.graph.node}
    for fused in (True, False):
        np.testing.assert_array_equal(run(model, x, fused=fused), before[fused])


def test_only_misaligned_dense_convs_are_candidates() -> None:
    assert [n.name for n in pad_candidates(qdq_conv_model(3))] == ["stem"]
    assert pad_candidates(qdq_conv_model(8)) == []
    assert pad_candidates(qdq_conv_model(6, out=6, group=6)) == []  # depthwise
    model = qdq_conv_model(3)
    assert pad_conv_input_channels(model, only={"other"}) == []
    assert [n.op_type for n in model.graph.node].count("Pad") == 0


def test_node_time_matches_ort_fused_names_only() -> None:
    times = {"stem_token_3": 10.0, "stem_1_token_4": 99.0, "stem_chanpad": 2.0}
    assert node_time(times, "stem") == 10.0
    assert node_time(times, "stem_chanpad") == 2.0
    assert node_time(times, "absent") is None


def test_padding_kept_only_when_clearly_faster() -> None:
    convs = [PaddedConv("a", 3, 4, "a_chanpad"), PaddedConv("b", 3, 4, "b_chanpad"),
             PaddedConv("c", 1, 4, "c_chanpad")]
    plain = {"a_token_1": 100.0, "b_token_2": 100.0}
    padded = {"a_token_1": 60.0, "a_chanpad": 5.0, "b_token_2": 93.0, "b_chanpad": 5.0}
    choice = faster_padding(plain, padded, convs)
    assert choice["a"] == {"channels": 3, "padded_to": 4, "plain_us": 100.0, "padded_us": 65.0,
                           "keep": True}
    assert choice["b"]["keep"] is False and choice["b"]["padded_us"] == 98.0  # the Pad counts
    assert choice["c"]["keep"] is False and "not found" in choice["c"]["reason"]


def test_example_feed_needs_fixed_non_batch_dims() -> None:
    sess = ort.InferenceSession(qdq_conv_model(3).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    feed = example_feed(sess)
    assert feed["x"].shape == (1, 3, 20, 20) and feed["x"].dtype == np.float32
    dynamic = qdq_conv_model(3)
    dynamic.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    sess = ort.InferenceSession(dynamic.SerializeToString(), providers=["CPUExecutionProvider"])
    assert example_feed(sess) is None


def test_ort_build_records_its_choice_and_is_exact(tmp_path) -> None:
    from edgecompress.backends import get_backend

    model = qdq_conv_model(3, out=32, size=64)
    source = tmp_path / "q.onnx"
    onnx.save(model, str(source))
    backend = get_backend("onnxruntime")
    artifact = backend.build(source, tmp_path / "engine", precision="int8")
    info = json.loads((tmp_path / "engine" / "engine.json").read_text())
    choice = info["channel_padding"]["stem"]
    assert set(choice) >= {"plain_us", "padded_us", "keep"} and choice["padded_to"] == 4
    assert choice["keep"] == (choice["padded_us"] <= 0.95 * choice["plain_us"])
    pads = [n for n in onnx.load(str(artifact)).graph.node if n.op_type == "Pad"]
    assert len(pads) == (1 if choice["keep"] else 0)
    x = np.random.default_rng(2).uniform(-1, 3, (3, 3, 64, 64)).astype(np.float32)
    with backend.load(artifact, threads=1) as runner:
        np.testing.assert_array_equal(runner.run(x), run(model, x))


def test_a_dequantize_other_nodes_still_read_is_kept() -> None:
    model = qdq_conv_model(3)
    model.graph.node.append(helper.make_node("Relu", ["xd"], ["xr"], name="other_user"))
    model.graph.output.append(helper.make_tensor_value_info("xr", TensorProto.FLOAT, None))
    x = np.random.default_rng(3).uniform(-1, 2, (1, 3, 20, 20)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    before = sess.run(None, {"x": x})
    assert len(pad_conv_input_channels(model)) == 1
    names = {n.name for n in model.graph.node}
    assert "dqx" in names and "dqw" not in names  # the input DQ has another reader
    assert "w" not in {i.name for i in model.graph.initializer}
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for got, want in zip(sess.run(None, {"x": x}), before, strict=True):
        np.testing.assert_array_equal(got, want)
