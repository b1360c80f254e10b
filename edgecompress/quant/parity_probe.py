"""Per-layer parity probe: the first int8 layer where an exported QDQ ONNX model diverges.

Why: a logit-level parity failure says *that* the engine computes something else than the
PyTorch int8 model, not *where* or *why*. Fused int8 kernels legitimately round differently
from PyTorch's reference (and the differences grow with depth), while an exporter or weight
bug breaks one layer outright; only a per-layer view tells the two apart and names the layer
a user could keep in FP32.

Every int8 activation of a QDQ model is the output of a QuantizeLinear node, so the probe
exposes those outputs as extra graph outputs and compares, in graph (topological) order, up to
three views of each on a few evaluation samples:

* ``engine``: ONNX Runtime with its graph optimizations on (fused QLinearConv/QGemm/... int8
  kernels, as the engine runs), after the uint8-weight rewrite on CPUs whose u8 x s8 kernels
  saturate (:func:`engine_model`);
* ``exact``: ONNX Runtime with graph optimizations off, which evaluates the QDQ graph literally
  in float (the reference semantics of the file);
* ``reference``: the PyTorch int8 model itself (when given), its ``quantize_per_tensor`` nodes
  matched to the ONNX QuantizeLinear nodes by order, scale and zero point.

A tensor diverges when more than :data:`MAX_FRACTION` of its elements differ by more than
:data:`MAX_STEPS` quantization steps (one or two steps are ordinary rounding). Whether the
``exact`` view diverges at the same place says which side is at fault: the file itself
(exporter, weights, scales) or the fused kernels of this CPU.
"""

from __future__ import annotations

import ast
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: More than this many quantization steps apart counts as a differing element.
MAX_STEPS = 2
#: A tensor diverges when more than this fraction of its elements differ.
MAX_FRACTION = 0.01
#: Ops a QuantizeLinear may sit behind that do not name a layer of their own (the probe walks
#: back through them to the conv/linear/add that produced the values).
_PASS_THROUGH = frozenset({"Relu", "Clip", "LeakyRelu", "Reshape", "Flatten", "Squeeze",
                           "Unsqueeze", "Transpose", "Identity", "Cast"})


@dataclass
class Divergence:
    """The first int8 activation where the engine parts from its reference.

    Attributes:
        tensor: Name of the QuantizeLinear output in the ONNX graph.
        onnx_node: The node that computed the values (conv/linear/add, walked back through
            activations and reshapes), or the QuantizeLinear node itself.
        op: That node's op type.
        module: Its PyTorch module path when the export recorded it, else None.
        against: ``reference`` (the PyTorch int8 model) or ``exact`` (ORT's QDQ emulation).
        fraction: Fraction of the tensor's elements more than :data:`MAX_STEPS` steps apart.
        max_steps: Largest difference in quantization steps.
        file_at_fault: Compared with the PyTorch model: True if ORT's exact QDQ emulation
            diverges there too (the file computes something else), False if only the fused
            kernels do; None without a PyTorch reference.
        index: Position of the tensor among the model's int8 activations (0-based).
        total: Number of int8 activations probed.
    """

    tensor: str
    onnx_node: str
    op: str
    module: str | None
    against: str
    fraction: float
    max_steps: int
    file_at_fault: bool | None
    index: int
    total: int

    @property
    def layer(self) -> str:
        """How a message names the layer: the module path if known, else the ONNX node."""
        return self.module or self.onnx_node

    def describe(self) -> str:
        """One sentence for an error message."""
        where = (f"{self.module} (ONNX node {self.onnx_node}, {self.op})" if self.module
                 else f"ONNX node {self.onnx_node} ({self.op})")
        what = (f"int8 output {self.tensor!r}, activation {self.index + 1} of {self.total}: "
                f"{100 * self.fraction:.1f} % of values more than {MAX_STEPS} steps apart "
                f"(max {self.max_steps})")
        if self.file_at_fault is True:
            cause = ("ORT's exact QDQ emulation differs there too, so the exported file itself "
                     "computes something else (weights, scales or graph)")
        elif self.file_at_fault is False:
            cause = ("ORT's exact QDQ emulation still matches PyTorch there, so the fused int8 "
                     "kernels of this CPU diverge")
        else:
            cause = "compared with ORT's exact QDQ emulation of the same file"
        return f"first diverging layer: {where}; {what}; {cause}"

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {**asdict(self), "layer": self.layer}


def engine_model(path: str | Path) -> tuple[Any, int]:
    """The ONNX model as the ORT engine runs it on this CPU, and the number of weights rewritten.

    On CPUs whose u8 x s8 kernels saturate (x86 without VNNI) full-range int8 weights are
    re-expressed as uint8 (exact), as the ORT backend does, else the check would blame the
    model for the CPU's saturation.
    """
    from edgecompress.isa import cpu_info
    from edgecompress.quant.onnx_passes import load, rewrite_wide_int8_weights_to_uint8

    model = load(Path(path))
    rewritten = rewrite_wide_int8_weights_to_uint8(model) if cpu_info().int8_saturates else 0
    return model, rewritten


def _scopes(node: Any) -> list[str]:
    props = {p.key: p.value for p in node.metadata_props}
    raw = props.get("pkg.torch.onnx.name_scopes")
    if raw:
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = None
        if isinstance(value, list):
            return [str(v) for v in value]
    raw = props.get("namespace")
    if raw:  # ": pkg.Net/stage1: torch...Sequential/stage1.0: pkg.Block/add: aten.add"
        return [part.split(":")[0].strip() for part in raw.split("/")]
    return []


def module_path(node: Any) -> str | None:
    """The PyTorch module that produced ``node``, from the exporter's metadata (or None).

    The last name scope is the aten op (``conv2d_3``); the one before it is the module
    (``stage2.0.conv1``), or the enclosing block for functional ops such as a residual add.
    """
    scopes = [s for s in _scopes(node) if s]
    return scopes[-2] if len(scopes) >= 2 else None


def _activation_quantizers(model: Any) -> list[Any]:
    inits = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits]


def _origin(model: Any, q_node: Any) -> Any:
    """The node whose values ``q_node`` quantizes, walked back through pass-through ops."""
    producers = {out: node for node in model.graph.node for out in node.output}
    node = producers.get(q_node.input[0])
    while node is not None and node.op_type in _PASS_THROUGH:
        prev = producers.get(node.input[0])
        if prev is None or prev.op_type in ("QuantizeLinear", "DequantizeLinear"):
            break
        node = prev
    return node if node is not None else q_node


def _with_quantizer_outputs(model: Any, quantizers: list[Any]) -> bytes:
    import onnx
    from onnx import TensorProto, helper

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    inits = {i.name: i for i in probe.graph.initializer}
    present = {o.name for o in probe.graph.output}
    for node in quantizers:
        if node.output[0] in present:
            continue
        zp = inits.get(node.input[2]) if len(node.input) >= 3 else None
        dtype = zp.data_type if zp is not None else TensorProto.UINT8
        probe.graph.output.append(helper.make_tensor_value_info(node.output[0], dtype, None))
    return probe.SerializeToString()


def _run(source: bytes, x: np.ndarray, names: list[str], optimize: bool) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
    out = sess.run(names, {sess.get_inputs()[0].name: x})
    return {name: np.asarray(arr).astype(np.int32) for name, arr in zip(names, out, strict=True)}


def _torch_codes(module: Any, x: np.ndarray, quantizers: list[Any],
                 scales: list[tuple[float, int]]) -> dict[str, np.ndarray] | None:
    """The PyTorch int8 model's activation codes, keyed by the matching ONNX Q outputs.

    Matches the converted graph's ``quantize_per_tensor`` nodes to the ONNX QuantizeLinear
    nodes by order, scale and zero point; returns None when they do not line up (then the probe
    compares with ORT's exact emulation only).
    """
    import torch
    from torch import fx

    graph = getattr(module, "graph", None)
    if graph is None:
        return None
    nodes = [n for n in graph.nodes
             if n.op == "call_function" and "quantize_per_tensor" in str(n.target)
             and "dequantize" not in str(n.target)]
    if len(nodes) != len(quantizers):
        logger.debug("probe: %d PyTorch quantize nodes vs %d ONNX QuantizeLinear", len(nodes),
                     len(quantizers))
        return None
    for node, (scale, zero) in zip(nodes, scales, strict=True):
        args = node.args
        if (len(args) < 3 or not isinstance(args[1], float) or int(args[2]) != zero
                or not np.isclose(args[1], scale, rtol=1e-5, atol=0)):
            logger.debug("probe: PyTorch node %s does not match the ONNX quantizer", node.name)
            return None
    wanted = {node.name: q.output[0] for node, q in zip(nodes, quantizers, strict=True)}
    codes: dict[str, np.ndarray] = {}

    class _Capture(fx.Interpreter):
        def run_node(self, n: Any) -> Any:
            result = super().run_node(n)
            if n.name in wanted:
                codes[wanted[n.name]] = result.detach().cpu().numpy().astype(np.int32)
            return result

    with torch.no_grad():
        _Capture(module).run(torch.from_numpy(x))
    return codes if len(codes) == len(wanted) else None


def _quantizer_scales(model: Any, quantizers: list[Any]) -> list[tuple[float, int]]:
    """(scale, zero point) of each activation QuantizeLinear."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    scales = []
    for q in quantizers:
        scale = float(numpy_helper.to_array(inits[q.input[1]]).reshape(-1)[0]) \
            if q.input[1] in inits else float("nan")
        zp = inits.get(q.input[2]) if len(q.input) >= 3 else None
        scales.append((scale, int(numpy_helper.to_array(zp).reshape(-1)[0]) if zp else 0))
    return scales


def reference_codes(model: Any, x: np.ndarray, reference_module: Any) -> dict[str, np.ndarray]:
    """The PyTorch int8 model's activation codes (int32), keyed by the ONNX QuantizeLinear
    outputs of ``model`` they match; empty when the two cannot be matched."""
    quantizers = _activation_quantizers(model)
    codes = _torch_codes(reference_module, np.ascontiguousarray(x, dtype=np.float32), quantizers,
                         _quantizer_scales(model, quantizers))
    return codes or {}


def _compare(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    if a.shape != b.shape or a.size == 0:
        return 1.0, -1
    steps = np.abs(a - b)
    return float(np.mean(steps > MAX_STEPS)), int(steps.max())


def first_divergence(model: Any, x: np.ndarray, reference_module: Any = None) -> Divergence | None:
    """Name the first int8 activation where the ORT engine diverges, or None if none does.

    Args:
        model: The ONNX model as the engine runs it (:func:`engine_model`).
        x: A few evaluation samples (the ones whose prediction changed are the most telling).
        reference_module: The PyTorch int8 (converted PT2E) model; without it, or when its
            quantizers cannot be matched to the file's, the engine is compared with ORT's exact
            QDQ emulation of the same file.
    """
    quantizers = _activation_quantizers(model)
    if not quantizers:
        return None
    scales = _quantizer_scales(model, quantizers)
    names = [q.output[0] for q in quantizers]
    source = _with_quantizer_outputs(model, quantizers)
    x = np.ascontiguousarray(x, dtype=np.float32)
    engine = _run(source, x, names, optimize=True)
    exact = _run(source, x, names, optimize=False)
    reference = _torch_codes(reference_module, x, quantizers, scales) \
        if reference_module is not None else None
    against = "reference" if reference is not None else "exact"
    base = reference if reference is not None else exact
    for index, (q, name) in enumerate(zip(quantizers, names, strict=True)):
        fraction, max_steps = _compare(engine[name], base[name])
        if fraction <= MAX_FRACTION:
            continue
        file_at_fault = None
        if reference is not None:
            file_at_fault = _compare(exact[name], reference[name])[0] > MAX_FRACTION
        origin = _origin(model, q)
        return Divergence(tensor=name, onnx_node=origin.name or origin.output[0],
                          op=origin.op_type, module=module_path(origin), against=against,
                          fraction=fraction, max_steps=max_steps, file_at_fault=file_at_fault,
                          index=index, total=len(quantizers))
    return None


def _isolated_subgraph(model: Any, q_node: Any, activations: set[str],
                       producers: dict[str, Any], inits: dict[str, Any]) -> tuple[list, list]:
    """The nodes between the int8 activations an op reads and the one ``q_node`` writes, and
    those input activations (empty when the graph input is reached: not an int8 op)."""
    nodes, inputs, stack, seen = [q_node], [], list(q_node.input), set()
    while stack:
        name = stack.pop()
        if not name or name in seen or name in inits:
            continue
        seen.add(name)
        if name in activations:
            inputs.append(name)
            continue
        node = producers.get(name)
        if node is None:
            return [], []
        nodes.append(node)
        stack += list(node.input)
    order = {id(n): i for i, n in enumerate(model.graph.node)}
    unique = {id(n): n for n in nodes}
    return sorted(unique.values(), key=lambda n: order[id(n)]), inputs


#: ONNX element type of a QuantizeLinear zero point -> numpy dtype of its codes.
_CODE_DTYPES = {2: np.uint8, 3: np.int8}


def _zero_point_type(inits: dict[str, Any], q_node: Any) -> int:
    zp = inits.get(q_node.input[2]) if len(q_node.input) >= 3 else None
    return zp.data_type if zp is not None else 2  # ONNX's default zero point is uint8


def isolated_op_codes(model: Any, inputs: dict[str, np.ndarray], *, optimize: bool,
                      disabled_optimizers: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Each int8 op of a QDQ ``model`` run alone on given int8 input codes.

    For every activation QuantizeLinear output ``t`` (but the first), the sub-graph from the
    int8 activations it reads (DequantizeLinear -> op -> QuantizeLinear, or the fused int8
    kernel when ``optimize``) is run on ``inputs[...]`` (raw codes, e.g. the PyTorch int8
    model's own from :func:`reference_codes`, keyed by the ONNX tensor names) and its output
    codes (int32) returned under ``t``.
    Unlike :func:`first_divergence`, which compares whole-network runs where one rounding flip
    propagates and grows with depth, this gives each op's own rounding: a correct op is within
    one step of the reference on a tiny fraction of its elements, a wrong one (fusion,
    requantization, pooling, zero point) is off on many.
    """
    import onnxruntime as ort
    from onnx import helper

    quantizers = _activation_quantizers(model)
    activations = {q.output[0] for q in quantizers}
    producers = {out: node for node in model.graph.node for out in node.output}
    inits = {i.name: i for i in model.graph.initializer}
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    out: dict[str, np.ndarray] = {}
    for q in quantizers[1:]:
        nodes, reads = _isolated_subgraph(model, q, activations, producers, inits)
        if not nodes or any(name not in inputs for name in reads):
            continue
        used = {i for n in nodes for i in n.input}
        feeds = {name: np.asarray(inputs[name]).astype(_CODE_DTYPES[_zero_point_type(
            inits, producers[name])]) for name in reads}
        graph = helper.make_graph(
            nodes, "isolated_op",
            [helper.make_tensor_value_info(name, _zero_point_type(inits, producers[name]), None)
             for name in reads],
            [helper.make_tensor_value_info(q.output[0], _zero_point_type(inits, q), None)],
            [inits[i] for i in sorted(used) if i in inits])
        sub = helper.make_model(graph, opset_imports=model.opset_import,
                                ir_version=model.ir_version)
        sess = ort.InferenceSession(sub.SerializeToString(), so,
                                    providers=["CPUExecutionProvider"],
                                    disabled_optimizers=list(disabled_optimizers))
        out[q.output[0]] = np.asarray(sess.run([q.output[0]], feeds)[0]).astype(np.int32)
    return out
