"""Text path, ONNX side: dynamic batch/sequence export, INT8 (dynamic, static, QAT) kernel
counts in ONNX Runtime's optimized graph, and detection of a silent FP32 engine."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers", reason="transformers not installed (extra: text)")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed (extra: onnx)")
import torch  # noqa: E402

from edgecompress.text.data import collate  # noqa: E402
from edgecompress.text.export import (  # noqa: E402
    export_onnx,
    optimize_transformer,
    ort_logits,
    ort_session,
)
from edgecompress.text.models import load_hf  # noqa: E402
from edgecompress.text.quant import (  # noqa: E402
    QDQ_DISABLED,
    kernel_report,
    quantize_dynamic_int8,
    quantize_static_int8,
)
from tests.text_fixtures import tiny_bert_dir  # noqa: E402

LAYERS = 2
LINEARS = 6 * LAYERS + 2  # q, k, v, attention output, FFN in/out per layer; pooler; classifier


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    model, tok = load_hf(tiny_bert_dir(root / "bert", layers=LAYERS, hidden=64, ffn=128))
    texts = ["a great film", "dull and boring plot with a messy ending and a bland cast",
             "superb", "the story is quite charming"]
    ids, mask = collate(tok(texts)["input_ids"], tok.pad_token_id)
    path = export_onnx(model, (ids[:2], mask[:2]), root / "model.onnx",
                       max_seq=model.config.max_position_embeddings, exporter="torchscript")
    opt = root / "model.opt.onnx"
    fused = optimize_transformer(path, opt)
    return {"root": root, "model": model, "tok": tok, "onnx": path, "opt": opt, "ids": ids,
            "mask": mask, "fused": fused}


def test_torchscript_export_gets_ort_transformer_fusions(exported):
    """Attention, embeddings, skip LayerNorm and bias GELU are fused on our export; counted in
    the optimizer's statistics and in the saved graph (a silent loss of a fusion fails)."""
    import onnx

    expected = {"Attention": LAYERS, "EmbedLayerNormalization": 1,
                "SkipLayerNormalization": 2 * LAYERS, "BiasGelu": LAYERS}
    assert {op: exported["fused"].get(op, 0) for op in expected} == expected, exported["fused"]
    ops = [n.op_type for n in onnx.load(str(exported["opt"])).graph.node]
    assert {op: ops.count(op) for op in expected} == expected
    assert "Softmax" not in ops  # attention really runs in the fused kernel


def test_dynamo_export_gets_no_attention_fusion(exported, tmp_path):
    """Why the FP32 engines use the TorchScript exporter: on the dynamo graph of the same model
    ORT's optimizer fuses no Attention (if this starts fusing, the default can change)."""
    model, ids, mask = exported["model"], exported["ids"], exported["mask"]
    path = export_onnx(model, (ids[:2], mask[:2]), tmp_path / "dynamo.onnx",
                       max_seq=model.config.max_position_embeddings, exporter="dynamo")
    fused = optimize_transformer(path, tmp_path / "dynamo.opt.onnx")
    assert fused.get("Attention", 0) == 0, fused


def _torch_logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits.numpy()


def test_export_has_dynamic_batch_and_sequence(exported):
    model = exported["model"]
    for batch, seq in ((1, 5), (4, exported["ids"].shape[1]), (3, 40)):
        ids = torch.randint(5, 150, (batch, seq))
        mask = torch.ones_like(ids)
        mask[0, seq // 2:] = 0  # padding inside the batch
        for path in (exported["onnx"], exported["opt"]):
            got = ort_logits(ort_session(path), ids.numpy(), mask.numpy())
            np.testing.assert_allclose(got, _torch_logits(model, ids, mask), atol=1e-4)


def test_dynamic_int8_runs_an_int8_kernel_per_linear(exported):
    out = quantize_dynamic_int8(exported["opt"], exported["root"] / "dyn.onnx")
    report = kernel_report(out)
    # q, k, v of a layer are one packed QAttention; the other Linears DynamicQuantizeMatMul
    assert report["int8_kernels"] == {"QAttention": LAYERS,
                                      "DynamicQuantizeMatMul": LINEARS - 3 * LAYERS}, report
    assert report["fp32_nodes"] == []
    assert report["fp32_embeddings"] == [] and report["int8_embeddings"] >= 1, report
    float_tables = quantize_dynamic_int8(exported["opt"], exported["root"] / "dyn_fe.onnx",
                                         embeddings=False)
    float_report = kernel_report(float_tables)
    assert float_report["fp32_embeddings"] and float_report["int8_embeddings"] == 0
    assert out.stat().st_size < float_tables.stat().st_size
    ref = _torch_logits(exported["model"], exported["ids"], exported["mask"])
    got = ort_logits(ort_session(out), exported["ids"].numpy(), exported["mask"].numpy())
    assert np.abs(got - ref).max() < 0.05


def test_static_qdq_int8_kernels_and_no_integer_tensor_quantized(exported):
    import onnx

    feeds = [(exported["ids"].numpy(), exported["mask"].numpy())]
    out = quantize_static_int8(exported["onnx"], exported["root"] / "static.onnx", feeds)
    graph = onnx.load(str(out)).graph
    q_inputs = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    assert not q_inputs & {"input_ids", "attention_mask"}
    report = kernel_report(out, disabled=QDQ_DISABLED)
    assert report["int8_total"] >= LINEARS, report["ops"]
    assert report["fp32_nodes"] == []


def test_unquantized_engine_is_reported_as_fp32(exported):
    report = kernel_report(exported["opt"])
    assert report["int8_total"] == 0
    # every weight matmul is float, the fused Attention (packed q, k, v) included
    assert len(report["fp32_nodes"]) >= LINEARS - 2 * LAYERS - 2, report["fp32_nodes"]
    assert sum("Attention" in name for name in report["fp32_nodes"]) == LAYERS


def test_qat_quantizes_linears_only_and_fuses_in_ort(exported):
    pytest.importorskip("torchao", reason="torchao not installed (QAT)")
    from torchao.quantization.pt2e import move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    from edgecompress.text.qat import _set_mode, prepare_qat

    ids, mask = exported["ids"], exported["mask"]
    prepared, annotated = prepare_qat(exported["model"], (ids[:2], mask[:2]))
    assert annotated == LINEARS
    move_exported_model_to_train(prepared)
    optimizer = torch.optim.SGD(prepared.parameters(), lr=1e-3)
    loss = prepared(ids, mask).logsumexp(1).mean()  # one QAT step: gradients flow through FQ
    loss.backward()
    optimizer.step()
    _set_mode(prepared, False)
    converted = convert_pt2e(prepared)
    for node in converted.graph.nodes:  # integer tensors (ids, mask) are never quantized
        if node.op == "call_function" and "quantize_per" in str(node.target):
            val = node.args[0].meta.get("val")
            assert val is None or val.is_floating_point(), node.format_node()
    out = export_onnx(converted, (ids[:2], mask[:2]), exported["root"] / "qat.onnx", wrap=False,
                      max_seq=64)
    report = kernel_report(out, disabled=QDQ_DISABLED)
    assert report["int8_total"] == LINEARS, report["ops"]
    assert report["fp32_nodes"] == []
    got = ort_logits(ort_session(out, disabled=QDQ_DISABLED), ids.numpy(), mask.numpy())
    with torch.no_grad():
        ref = converted(ids, mask).numpy()
    assert np.abs(got - ref).max() < 0.05
