"""A PT2E quantizer the project owns: it annotates conv/linear groups and residual adds.

Why not a stock quantizer: torch 2.13 dropped XNNPACKQuantizer, X86InductorQuantizer targets
Inductor (not ONNX Runtime or TensorRT), and both decide by themselves which tensors get Q/DQ.
Here the preset says exactly where quantization goes, which is what makes ONNX Runtime fuse every
conv/linear into an int8 kernel and what TensorRT's QDQ rules require.

Patterns (the graph is ``torch.export``'s ATen graph):

- ``conv|linear [-> batch_norm] [-> relu|hardtanh]``: input activation and weight quantized,
  bias left in float (TensorRT rejects an int32-bias DequantizeLinear; ONNX Runtime quantizes a
  float bias itself when it fuses), output quantized after the last op of the group so the
  activation function is folded into the int8 kernel.
- ``add [-> relu]`` of two float tensors (residual connections): both inputs and the output.

Integer tensors (masks, indices, shapes) are never annotated: only ``call_function`` nodes whose
example value is a floating-point tensor are touched.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from torch.fx import GraphModule, Node

aten = torch.ops.aten

CONV_LINEAR = {aten.conv1d.default, aten.conv2d.default, aten.conv1d.padding,
               aten.conv2d.padding, aten.linear.default}
BATCH_NORM = {aten.batch_norm.default, aten._native_batch_norm_legit.default,
              aten._native_batch_norm_legit_no_training.default,
              aten.cudnn_batch_norm.default}
ACTIVATION = {aten.relu.default, aten.relu_.default, aten.hardtanh.default,
              aten.hardtanh_.default, aten.relu6.default}
ADD = {aten.add.Tensor, aten.add_.Tensor}


def module_name(node: Node) -> str:
    """Dotted name of the innermost ``nn.Module`` that produced ``node`` ("" if unknown)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    fqn = list(stack.values())[-1][0]
    # torch.export prefixes names of modules reached through a wrapper with "L['self']." etc.
    return fqn.replace("L['self'].", "").replace("L__self___", "")


def is_float_tensor(node: object) -> bool:
    """Whether ``node`` is a graph value holding a floating-point tensor."""
    if not isinstance(node, Node):
        return False
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.is_floating_point()


@dataclass
class Specs:
    """The quantization specs one preset uses (activation, weight)."""

    activation: object
    weight: object
    skip: frozenset[str] = field(default_factory=frozenset)
    #: Spec of the model's own inputs and outputs (pixels, logits): min-max, never clipped.
    #: Their ranges are meaningful end to end: clipping bright pixels or the largest logit
    #: (what percentile/entropy calibration would do) changes the prediction.
    boundary: object | None = None


def _single_user(node: Node) -> Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _group_output(node: Node) -> tuple[Node, list[Node]]:
    """Follow ``conv -> [bn [-> getitem]] -> [act]``; return the group's last node and the
    nodes in between (annotated as part of the group, without their own Q/DQ)."""
    inner: list[Node] = []
    cur = node
    nxt = _single_user(cur)
    if nxt is not None and nxt.op == "call_function" and nxt.target in BATCH_NORM:
        inner.append(nxt)
        cur = nxt
        if nxt.target is not aten.batch_norm.default:  # returns a tuple: take item 0
            getitems = [u for u in nxt.users if u.target is operator.getitem
                        and u.args[1] == 0]
            if len(getitems) != 1:
                return node, []
            cur = getitems[0]
            inner.append(cur)
        nxt = _single_user(cur)
    if nxt is not None and nxt.op == "call_function" and nxt.target in ACTIVATION:
        inner.append(nxt)
        cur = nxt
    return cur, inner[:-1] if inner and inner[-1] is cur else inner


def _output_spec(node: Node, specs: Specs) -> object:
    feeds_output = any(user.op == "output" for user in node.users)
    return specs.boundary if feeds_output and specs.boundary is not None else specs.activation


def _input_spec(node: Node, specs: Specs) -> object:
    is_input = node.op == "placeholder"
    return specs.boundary if is_input and specs.boundary is not None else specs.activation


def annotate_graph(gm: GraphModule, specs: Specs) -> dict[str, list[str]]:
    """Annotate ``gm`` in place; return ``{"quantized": [...], "skipped": [...]}`` module names.

    Raises:
        ValueError: a name in ``specs.skip`` matches no conv/linear layer (a typo must not
            silently quantize the layer the user wanted in float).
    """
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    def mark(n: Node, **kwargs: object) -> None:
        n.meta["quantization_annotation"] = QuantizationAnnotation(_annotated=True, **kwargs)

    quantized: list[str] = []
    skipped: list[str] = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in CONV_LINEAR:
            continue
        if "quantization_annotation" in node.meta:
            continue
        name = module_name(node)
        if name in specs.skip:
            skipped.append(name)
            continue
        x, w = node.args[0], node.args[1]
        if not (is_float_tensor(x) and isinstance(w, Node)):
            continue
        out, inner = _group_output(node)
        out_spec, in_spec = _output_spec(out, specs), _input_spec(x, specs)
        if out is node:
            mark(node, input_qspec_map={x: in_spec, w: specs.weight}, output_qspec=out_spec)
        else:
            mark(node, input_qspec_map={x: in_spec, w: specs.weight})
            for n in inner:
                mark(n)
            mark(out, output_qspec=out_spec)
        quantized.append(name)
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in ADD:
            continue
        if "quantization_annotation" in node.meta:
            continue
        a, b = node.args[0], node.args[1]
        if not (is_float_tensor(a) and is_float_tensor(b)):
            continue
        nxt = _single_user(node)
        if nxt is not None and nxt.op == "call_function" and nxt.target in ACTIVATION:
            mark(node, input_qspec_map={a: specs.activation, b: specs.activation})
            mark(nxt, output_qspec=specs.activation)
        else:
            mark(node, input_qspec_map={a: specs.activation, b: specs.activation},
                 output_qspec=specs.activation)
    unknown = sorted(set(specs.skip) - set(skipped))
    if unknown:
        raise ValueError(f"layers to keep in float not found among the conv/linear layers: "
                         f"{', '.join(unknown)}")
    return {"quantized": quantized, "skipped": skipped}
