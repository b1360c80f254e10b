"""Put the biases of a converted (PT2E) int8 model on the int32 grid the engine uses.

ONNX Runtime's QLinearConv / QGemm (and TFLite's int8 kernels) add the bias to the int32
accumulator, so the engine's bias is ``round(b / (x_scale * w_scale))`` steps of
``x_scale * w_scale`` (``quant.onnx_passes.quantize_biases`` writes exactly that), while
``convert_pt2e`` leaves a float bias in the PyTorch int8 model. The difference is at most half
an accumulator step per channel (a few % of an output step), but it moves values that sit near
an int8 rounding boundary by one step, and a deep network amplifies those flips: on a trained
EfficientNet-B0 (81 convs, sigmoid gates whose int8 output moves up to ~10 steps per input
step, squeeze-excite poolings over few channels) the engine file run *unfused* agreed with the
float-bias reference on only 0.87 of the images, though every bias was within half a step.

The engine cannot carry a float bias (QLinearConv takes int32), so the reference is what
changes: snapping its biases makes the PyTorch int8 model compute what the deployed engine
computes, and the exported QDQ file then carries biases that ``quantize_biases`` converts
exactly. Biases that would not fit int32 (channels with tiny weight scales) are clipped the
same way the engine clips them, so the reference and the engine still agree.
"""

from __future__ import annotations

from typing import Any

import torch

_INT32 = (-(2**31), 2**31 - 1)


def _linear_ops() -> set[Any]:
    aten = torch.ops.aten
    return {aten.conv1d.default, aten.conv2d.default, aten.conv3d.default,
            aten.linear.default}


def _dequant_ops() -> tuple[set[Any], set[Any]]:
    qd = torch.ops.quantized_decomposed
    return ({qd.dequantize_per_tensor.default, qd.dequantize_per_tensor.tensor},
            {qd.dequantize_per_channel.default})


def _value(gm: torch.fx.GraphModule, arg: Any) -> torch.Tensor | None:
    """A scale argument as a float64 tensor: a literal, or a ``get_attr`` buffer."""
    if isinstance(arg, (int, float)):
        return torch.tensor(float(arg), dtype=torch.float64)
    if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
        return _attr(gm, arg.target).detach().to(torch.float64)
    return None


def _attr(gm: torch.fx.GraphModule, target: str) -> torch.Tensor:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def snap_biases_to_int32(gm: torch.fx.GraphModule) -> dict[str, int]:
    """Round, in place, the float bias of every conv/linear whose input and weight are
    dequantized to ``q * x_scale * w_scale`` (``q`` int32, clipped), per output channel.

    Returns ``{"biases": snapped, "clipped": channels clipped to the int32 range}``.
    """
    per_tensor, per_channel = _dequant_ops()
    snapped = clipped = 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in _linear_ops() or len(node.args) < 3:
            continue
        x, w, b = node.args[:3]
        if not (isinstance(x, torch.fx.Node) and isinstance(w, torch.fx.Node)
                and isinstance(b, torch.fx.Node) and b.op == "get_attr"):
            continue
        if x.target not in per_tensor or w.target not in per_tensor | per_channel:
            continue
        x_scale, w_scale = _value(gm, x.args[1]), _value(gm, w.args[1])
        if x_scale is None or w_scale is None:
            continue
        bias = _attr(gm, b.target)
        scale = (x_scale.reshape(()) * w_scale.reshape(-1)).expand(bias.shape[0]).clone()
        scale[scale == 0] = 1e-12  # as quantize_biases does
        q = torch.round(bias.detach().to(torch.float64) / scale)
        clipped += int(((q < _INT32[0]) | (q > _INT32[1])).sum())
        q = q.clamp(*_INT32)
        with torch.no_grad():
            bias.copy_((q * scale).to(bias.dtype))
        snapped += 1
    return {"biases": snapped, "clipped": clipped}
