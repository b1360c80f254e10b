"""Issue 12: the bench code is written once for every family. What an engine is fed (one image
array, or token ids and a mask) is an EvalSet; a finished INT8 engine (the text family's) is
published by the ORT backend as it is; multi-input feeds and engine descriptions travel to a
remote device."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (extra: onnx)")

from edgecompress.backends import get_backend  # noqa: E402
from edgecompress.bench import benchmark_runners  # noqa: E402
from edgecompress.bench.evalset import ArrayEvalSet  # noqa: E402
from edgecompress.errors import DataError, ModelError  # noqa: E402
from tests.test_backends import _TwoInputs  # noqa: E402


def _feeds(n: int = 12, width: int = 5):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 20, (n, width), generator=gen)
    mask = torch.ones(n, width, dtype=torch.long)
    mask[::3, 3:] = 0
    return ids, mask


def _export(tmp_path, model) -> tuple:
    ids, mask = _feeds()
    path = tmp_path / "two.onnx"
    torch.onnx.export(model, (ids[:2], mask[:2]), str(path),
                      input_names=["input_ids", "attention_mask"], output_names=["logits"],
                      dynamic_axes={"input_ids": {0: "b"}, "attention_mask": {0: "b"}},
                      dynamo=False)
    return path, ids, mask


def test_benchmark_runners_scores_and_times_a_multi_input_feed(tmp_path):
    model = _TwoInputs().eval()
    path, ids, mask = _export(tmp_path, model)
    ref = model(ids, mask).detach().numpy()
    labels = np.array([0, 1] * 6)
    data = ArrayEvalSet({"input_ids": ids.numpy(), "attention_mask": mask.numpy()}, labels)
    with get_backend("onnxruntime").load(path) as runner:
        measured, result = benchmark_runners({"a": runner}, data, warmup=1, runs=3,
                                             batch_size=2)
    np.testing.assert_allclose(measured["a"]["logits"], ref, atol=1e-5)
    assert measured["a"]["accuracy"] == pytest.approx(float((ref.argmax(1) == labels).mean()))
    assert measured["a"]["latency_ms"]["input_shape"] == [2, 5]
    feed = data.timing_feed(2)
    assert feed["input_ids"].dtype == np.int64 and feed["input_ids"].shape == (2, 5)


def test_array_eval_set_names_what_does_not_fit():
    ids, mask = _feeds()
    with pytest.raises(DataError, match="'attention_mask' has 11 rows"):
        ArrayEvalSet({"input_ids": ids.numpy(), "attention_mask": mask.numpy()[:11]}, None)
    with pytest.raises(DataError, match="12 and 5"):
        ArrayEvalSet(np.zeros((12, 3), np.float32), np.zeros(5))
    # In memory: the whole split travels (the reference logits are cut to what was sent).
    x, y = ArrayEvalSet({"input_ids": ids.numpy()}, np.arange(12)).sample(limit=4)
    assert x["input_ids"].shape == (12, 5) and list(y) == list(range(12))


def test_remote_inputs_keep_every_input_its_dtype_and_order(tmp_path):
    from edgecompress.remote.jobs import read_inputs, write_inputs

    ids, mask = _feeds()
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy().astype(np.int32)}
    x, y = read_inputs(write_inputs(tmp_path, feed, np.arange(12)))
    assert list(x) == ["input_ids", "attention_mask"] and x["attention_mask"].dtype == np.int32
    np.testing.assert_array_equal(x["input_ids"], feed["input_ids"])
    assert list(y) == list(range(12))
    image = np.random.default_rng(0).random((3, 1, 4, 4))
    x, y = read_inputs(write_inputs(tmp_path, image, None))
    assert x.dtype == np.float32 and x.shape == (3, 1, 4, 4) and y is None


class _Projected(torch.nn.Module):
    """Token ids and mask through an embedding and two MatMuls (what dynamic INT8 quantizes)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(20, 16)
        self.w1 = torch.nn.Parameter(torch.randn(16, 16) / 4)
        self.w2 = torch.nn.Parameter(torch.randn(16, 2) / 4)

    def forward(self, input_ids, attention_mask):
        h = torch.relu(torch.matmul(self.emb(input_ids), self.w1))
        m = attention_mask.unsqueeze(-1).float()
        return torch.matmul((h * m).sum(1) / m.sum(1), self.w2)


def test_a_finished_int8_engine_is_published_as_it_is(tmp_path):
    """The text family's INT8 file (dynamic or QDQ, made for ORT) carries its own description;
    the backend copies it unchanged, counts its int8 kernels, keeps its session settings, and
    the description goes with the artifact to a remote board."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgecompress.backends.onnxruntime import engine_info_path
    from edgecompress.remote.bench import with_description

    path, ids, mask = _export(tmp_path, _Projected().eval())
    int8 = tmp_path / "two.int8.onnx"
    quantize_dynamic(str(path), str(int8), weight_type=QuantType.QInt8)
    engine_info_path(int8).write_text(json.dumps({"disabled_optimizers": ["MatMulScaleFusion"]}))
    artifact = get_backend("onnxruntime").build(int8, tmp_path / "engine", precision="int8")
    assert artifact.read_bytes() == int8.read_bytes()
    info = json.loads((artifact.parent / "engine.json").read_text())
    assert info["published_as_is"] and info["disabled_optimizers"] == ["MatMulScaleFusion"]
    assert info["int8_total"] > 0 and info["precision"] == "int8"
    assert get_backend("onnxruntime").inspect(artifact, precision="int8")["int8_kernels"]
    files = with_description("student--model.onnx", artifact)
    assert files["student--model.onnx.engine.json"] == artifact.parent / "engine.json"
    with get_backend("onnxruntime").load(artifact) as runner:
        got = runner.run({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    ref = _Projected().eval()(ids, mask).detach().numpy()
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9
    # A float file that claims to be an engine would silently run FP32: refused.
    engine_info_path(path).write_text("{}")
    with pytest.raises(ModelError, match="runs no int8 kernel"):
        get_backend("onnxruntime").build(path, tmp_path / "float", precision="int8")
    assert not (tmp_path / "float" / "model.onnx").exists()


def test_value_ranges_of_integer_inputs_for_a_tool_that_makes_up_inputs():
    ids, mask = _feeds()
    data = ArrayEvalSet({"input_ids": ids.numpy()[1:, :4], "attention_mask": mask.numpy()[1:]},
                        None)  # the timing row (row 1 here) has a full mask
    first = ids.numpy()[1, :4]
    assert data.value_ranges() == [(int(first.min()), int(first.max())), (1, 1)]
    assert ArrayEvalSet(np.zeros((3, 1, 4, 4), np.float32), None).value_ranges() is None
