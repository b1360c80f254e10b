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
SILU = {aten.silu.default, aten.silu_.default}
SIGMOID = {aten.sigmoid.default, aten.sigmoid_.default}
MUL = {aten.mul.Tensor, aten.mul_.Tensor}
HARDSWISH = {aten.hardswish.default, aten.hardswish_.default}
HARDSIGMOID = {aten.hardsigmoid.default, aten.hardsigmoid_.default}
GLOBAL_POOL = {aten.adaptive_avg_pool2d.default, aten.mean.dim}


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
    #: Also quantize sigmoid, two-tensor mul and global average pooling (input and output), so
    #: ONNX Runtime fuses them into QLinearSigmoid / QLinearMul / QLinearGlobalAveragePool
    #: instead of running them in float between a DequantizeLinear and a QuantizeLinear. With
    #: :func:`decompose_silu` first, SiLU and the squeeze-excitation gates become int8 too.
    elementwise: bool = False


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
    if specs.elementwise:
        _annotate_elementwise(gm, specs, mark)
    unknown = sorted(set(specs.skip) - set(skipped))
    if unknown:
        raise ValueError(f"layers to keep in float not found among the conv/linear layers: "
                         f"{', '.join(unknown)}")
    return {"quantized": quantized, "skipped": skipped}


def _is_global_pool(node: Node) -> bool:
    """``adaptive_avg_pool2d(x, 1)`` or ``mean(x, [-1, -2] | [2, 3], keepdim=True)``."""
    if node.target is aten.adaptive_avg_pool2d.default:
        size = node.args[1]
        return list(size) in ([1, 1], [1])
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    return bool(keep) and sorted(int(d) % 4 for d in (dims or [])) == [2, 3]


def _annotate_elementwise(gm: GraphModule, specs: Specs, mark: object) -> int:
    """Sigmoid, hardsigmoid, mul of two float tensors and global average pooling: inputs and
    output quantized (ONNX Runtime's QDQ unary/binary selectors turn each DQ -> op -> Q group into
    one com.microsoft QLinear op). Nodes already in a group (a conv's activation) are left."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or "quantization_annotation" in node.meta:
            continue
        if not is_float_tensor(node):
            continue
        if (node.target in SIGMOID or node.target in HARDSIGMOID
                or (node.target in GLOBAL_POOL and _is_global_pool(node))):
            x = node.args[0]
            if not is_float_tensor(x):
                continue
            mark(node, input_qspec_map={x: _input_spec(x, specs)},
                 output_qspec=_output_spec(node, specs))
        elif node.target in MUL:
            a, b = node.args[0], node.args[1]
            if not (is_float_tensor(a) and is_float_tensor(b)):
                continue
            if a.op == "get_attr" or b.op == "get_attr":
                # x * parameter (layer scale): an activation spec (per-tensor uint8) would
                # quantize the parameter coarsely; leave it float.
                continue
            mark(node, input_qspec_map={a: _input_spec(a, specs), b: _input_spec(b, specs)},
                 output_qspec=_output_spec(node, specs))
        else:
            continue
        count += 1
    return count


def global_pool_as_mean(graph: GraphModule) -> int:
    """Rewrite ``adaptive_avg_pool2d(x, 1)`` as ``mean(x, [-1, -2], keepdim=True)`` in place.

    The same values. The ONNX exporter lowers ``adaptive_avg_pool2d`` with a dynamic batch
    through index arithmetic (ReduceMean, Reshape, a Gather from ``as_strided``) on some input
    sizes, which puts a Gather between the pooling and its QuantizeLinear and keeps the pooling
    float; ``mean`` exports as a single ReduceMean that :func:`~edgecompress.quant.onnx_passes.
    reduce_mean_to_global_pool` turns into GlobalAveragePool (QLinearGlobalAveragePool in ORT).
    Returns the number rewritten.
    """
    count = 0
    for node in list(graph.graph.nodes):
        if (node.op != "call_function" or node.target is not aten.adaptive_avg_pool2d.default
                or not _is_global_pool(node)):
            continue
        with graph.graph.inserting_before(node):
            mean = graph.graph.call_function(aten.mean.dim, (node.args[0], [-1, -2], True))
        mean.meta = {k: v for k, v in node.meta.items() if k != "source_fn_stack"}
        node.replace_all_uses_with(mean)
        graph.graph.erase_node(node)
        count += 1
    if count:
        graph.graph.lint()
        graph.recompile()
    return count


def decompose_hardswish(graph: GraphModule) -> int:
    """Rewrite every ``hardswish(x)`` as ``mul(x, hardsigmoid(x))`` (before annotation), in place.

    ONNX Runtime has no int8 HardSwish and runs ONNX's HardSwish as its function body
    (HardSigmoid, Mul) in float between DequantizeLinear and QuantizeLinear. Written out and
    annotated, the mul becomes a QLinearMul and only the hardsigmoid stays float. Returns the
    number of HardSwishes rewritten.
    """
    return _decompose(graph, HARDSWISH, aten.hardsigmoid.default)


def decompose_silu(graph: GraphModule) -> int:
    """Rewrite every ``silu(x)`` as ``mul(x, sigmoid(x))`` (before annotation), in place.

    A SiLU has no integer kernel in ONNX Runtime or TFLite; written as sigmoid and mul, both
    can be annotated and run as int8 kernels (ORT: QLinearSigmoid + QLinearMul; TFLite: int8
    LOGISTIC + MUL). Returns the number of SiLUs rewritten.
    """
    return _decompose(graph, SILU, aten.sigmoid.default)


def _decompose(graph: GraphModule, targets: set[object], gate_op: object) -> int:
    """``f(x)`` -> ``mul(x, gate_op(x))`` for every node whose target is in ``targets``."""
    count = 0
    for node in list(graph.graph.nodes):
        if node.op != "call_function" or node.target not in targets:
            continue
        x = node.args[0]
        with graph.graph.inserting_before(node):
            sigmoid = graph.graph.call_function(gate_op, (x,))
            product = graph.graph.call_function(aten.mul.Tensor, (x, sigmoid))
        for new in (sigmoid, product):  # shapes, module paths; not the SiLU's source
            new.meta = {k: v for k, v in node.meta.items() if k != "source_fn_stack"}
        node.replace_all_uses_with(product)
        graph.graph.erase_node(node)
        count += 1
    if count:
        graph.graph.lint()
        graph.recompile()
    return count
