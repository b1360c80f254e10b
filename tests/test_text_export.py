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
from edgecompress.text.testing import tiny_bert_dir  # noqa: E402

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
                       max_seq=model.config.max_position_embeddings)
    opt = root / "model.opt.onnx"
    optimize_transformer(path, opt)
    return {"root": root, "model": model, "tok": tok, "onnx": path, "opt": opt, "ids": ids,
            "mask": mask}


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
    assert report["int8_total"] == LINEARS, report["ops"]
    assert report["fp32_nodes"] == []
    ref = _torch_logits(exported["model"], exported["ids"], exported["mask"])
    got = ort_logits(ort_session(out), exported["ids"].numpy(), exported["mask"].numpy())
    assert np.abs(got - ref).max() < 0.05


def test_static_qdq_int8_kernels_and_no_integer_tensor_quantized(exported):
    import onnx

    feeds = [(exported["ids"].numpy(), exported["mask"].numpy())]
    out = quantize_static_int8(exported["opt"], exported["root"] / "static.onnx", feeds)
    graph = onnx.load(str(out)).graph
    q_inputs = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    assert not q_inputs & {"input_ids", "attention_mask"}
    report = kernel_report(out, disabled=QDQ_DISABLED)
    assert report["int8_total"] >= LINEARS, report["ops"]
    assert report["fp32_nodes"] == []


def test_unquantized_engine_is_reported_as_fp32(exported):
    report = kernel_report(exported["opt"])
    assert report["int8_total"] == 0
    assert len(report["fp32_nodes"]) >= LINEARS - 2  # every weight matmul is float


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
