"""INT8 quantization-aware training of a BERT student with torchao's PT2E flow.

prepare -> train -> convert: the student is captured with ``torch.export`` (dynamic batch and
sequence length), a quantizer owned here annotates the inputs of every ``aten.linear`` (uint8
asymmetric per-tensor activations, int8 symmetric per-channel weights, bias left in float) and
nothing else (plus the outputs of the 2-D pooler/classifier Linears), the fake-quant model is
distilled from the teacher's logits for a short while, converted to Q/DQ, exported to ONNX.
ONNX Runtime fuses each ``DQ -> MatMul`` pair into an integer kernel (``MatMulIntegerToFloat``).
The attention mask, token ids and positions are integer tensors that never meet an annotated
node, so they are never fake-quantized; LayerNorm, softmax and GELU stay in float (as in PTQ).
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from edgecompress.errors import BackendUnavailable

logger = logging.getLogger(__name__)


def _torchao():
    try:
        from torchao.quantization import pt2e  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailable("quant.method qat needs torchao (PT2E): pip install "
                                 "'torchao==0.18.0'") from exc


def _specs():
    from torchao.quantization.pt2e import (
        FakeQuantize,
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
    )
    from torchao.quantization.pt2e.quantizer import QuantizationSpec

    act = QuantizationSpec(
        dtype=torch.uint8, quant_min=0, quant_max=255, qscheme=torch.per_tensor_affine,
        is_dynamic=False, observer_or_fake_quant_ctr=FakeQuantize.with_args(
            observer=MovingAverageMinMaxObserver, dtype=torch.uint8, quant_min=0, quant_max=255,
            qscheme=torch.per_tensor_affine))
    weight = QuantizationSpec(
        dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_channel_symmetric,
        ch_axis=0, is_dynamic=False, observer_or_fake_quant_ctr=FakeQuantize.with_args(
            observer=MovingAveragePerChannelMinMaxObserver, dtype=torch.int8, quant_min=-127,
            quant_max=127, qscheme=torch.per_channel_symmetric, ch_axis=0))
    return act, weight


def linear_quantizer():
    """A PT2E quantizer annotating Linear inputs (activation + weight) only."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, Quantizer

    act, weight = _specs()

    class LinearOnlyQuantizer(Quantizer):
        """Annotates ``aten.linear`` nodes whose input is a float tensor."""

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            count = 0
            for node in model.graph.nodes:
                if node.op != "call_function" or node.target is not torch.ops.aten.linear.default:
                    continue
                x, w = node.args[0], node.args[1]
                val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
                if not (isinstance(val, torch.Tensor) and val.is_floating_point()):
                    continue
                # A 2-D input (pooler, classifier) exports as Gemm, which ORT runs in int8
                # only as QGemm, i.e. with a Q on its output; 3-D ones export as MatMul + Add
                # and fuse without one (MatMulIntegerToFloat), keeping LayerNorm inputs float.
                out_spec = act if val.dim() == 2 else None
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={x: act, w: weight}, output_qspec=out_spec,
                    _annotated=True)
                count += 1
            self.annotated = count
            return model

        def validate(self, model: torch.fx.GraphModule) -> None:
            pass

    return LinearOnlyQuantizer()


def prepare_qat(student: nn.Module, example: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.fx.GraphModule, int]:
    """Capture ``student`` (logits only) and insert fake quantization; returns the number of
    Linear layers annotated."""
    _torchao()
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from edgecompress.text.export import LogitsOnly, dynamic_shapes

    shapes = dynamic_shapes(student.config.max_position_embeddings)
    wrapper = LogitsOnly(student).eval()
    graph = torch.export.export(wrapper, example, dynamic_shapes=shapes, strict=False).module()
    quantizer = linear_quantizer()
    prepared = prepare_qat_pt2e(graph, quantizer)
    return prepared, quantizer.annotated


def _set_mode(model: nn.Module, training: bool) -> None:
    from torchao.quantization.pt2e import (
        move_exported_model_to_eval,
        move_exported_model_to_train,
    )

    (move_exported_model_to_train if training else move_exported_model_to_eval)(model)


def _forward(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, **_: Any):
    return SimpleNamespace(logits=model(ids, mask))


def qat_int8(ctx: Any, student: nn.Module, out: Path, example) -> dict[str, Any]:
    """QAT (``quant.qat``: KD on logits + CE), convert, export ``out``; returns metrics."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    from edgecompress.text.export import export_onnx
    from edgecompress.text.losses import TextDistillLoss
    from edgecompress.text.stages import load_run_model
    from edgecompress.text.train import train

    cfg = ctx.recipe.quant.qat
    prepared, annotated = prepare_qat(student, example)
    metrics: dict[str, Any] = {"method": "qat", "annotated_linears": annotated}
    if cfg.epochs > 0:
        teacher = load_run_model(ctx.teacher_dir)
        loss = TextDistillLoss(temperature=cfg.temperature, kd=cfg.kd, ce=cfg.ce, hidden=0.0,
                               attention=0.0, layer_map=[], student_width=1, teacher_width=1)
        torch.manual_seed(ctx.recipe.seed)
        metrics["train"] = train(prepared, ctx.encoded("train"), ctx.encoded("val"), cfg,
                                 ctx.pad_id, seed=ctx.recipe.seed, teacher=teacher,
                                 loss_fn=loss, label="qat", forward=_forward,
                                 set_mode=_set_mode)
    _set_mode(prepared, False)
    converted = convert_pt2e(prepared)
    export_onnx(converted, example, out, ctx.recipe.export.opset, wrap=False,
                max_seq=student.config.max_position_embeddings)
    return metrics
