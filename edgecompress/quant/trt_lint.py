"""TensorRT-compatibility lint of a Q/DQ ONNX model, on CPU, before anything reaches a Jetson.

An engine build takes minutes on an Orin Nano and fails late (or, worse, quietly runs a layer in
FP16/FP32 instead of INT8) when the Q/DQ pattern is not what TensorRT's explicit quantization
accepts. These rules come from TensorRT's documentation of explicit quantization and its ONNX
parser: symmetric INT8 (every zero point 0, signed int8), weights quantized per output channel
(axis 0), activations per tensor, the bias left in float (an int32 bias DequantizeLinear is
rejected), an opset the parser supports, and only operators it implements.

:func:`lint_tensorrt` returns every finding; :func:`check_tensorrt_compat` raises ``ModelError``
listing them all (one message, so one run shows every problem).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import ModelError

#: Per-channel Q/DQ needs opset 13; TensorRT 10.3 (JetPack 6)'s ONNX parser reads up to 20.
MIN_OPSET = 13
MAX_OPSET = 20
_QDQ = ("QuantizeLinear", "DequantizeLinear")
_WEIGHT_CONSUMERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")

#: Operators of the default ONNX domain that TensorRT's ONNX parser (onnx-tensorrt 10.x,
#: docs/operators.md) implements. Anything else, or any other domain, fails to parse.
TENSORRT_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast
CastLike Ceil Celu Clip Compress Concat ConcatFromSequence Constant ConstantOfShape Conv
ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout
DynamicQuantizeLinear Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements
GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
GroupNormalization GRU HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization
IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization
LpPool LRN LSTM MatMul Max MaxPool MaxRoiPool Mean MeanVarianceNormalization Min Mish Mod Mul
Multinomial Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu
QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal
ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd
ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan
Scatter ScatterElements ScatterND Selu SequenceAt SequenceConstruct SequenceEmpty SequenceErase
SequenceInsert SequenceLength Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus
Softsign SpaceToDepth Split SplitToSequence Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile
TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())


@dataclass(frozen=True)
class Finding:
    """One violation: the rule, the node (or ``model``) and what to change."""

    rule: str
    node: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.node}: {self.message}"


@dataclass
class LintResult:
    """All findings of one model; ``passed`` when there are none."""

    source: str
    opset: int
    qdq_nodes: int
    findings: list[Finding] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "opset": self.opset, "qdq_nodes": self.qdq_nodes,
                "passed": self.passed, "findings": [asdict(f) for f in self.findings]}


def _load(model: Any) -> tuple[Any, str]:
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model, "<model>"
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"ONNX model not found: {path}")
    try:
        return onnx.load(str(path), load_external_data=False), str(path)
    except Exception as err:  # noqa: BLE001 - any parse failure is a bad model file
        raise ModelError(f"{path}: not a readable ONNX model ({err})") from None


def _constants(graph: Any) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs as arrays (external data is not loaded)."""
    from onnx import numpy_helper

    out = {}
    for init in graph.initializer:
        if init.data_location != 1:  # TensorProto.EXTERNAL
            out[init.name] = numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return out


def _dq_producers(graph: Any) -> dict[str, Any]:
    return {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}


def _axis(node: Any, rank: int) -> int:
    for attr in node.attribute:
        if attr.name == "axis":
            return attr.i % rank if rank else attr.i
    return 1 % rank if rank else 1  # the ONNX default axis is 1


def _node_name(node: Any) -> str:
    return node.name or f"{node.op_type}({', '.join(node.input[:1])})"


def lint_tensorrt(model: Any, *, require_qdq: bool = False, min_opset: int = MIN_OPSET,
                  max_opset: int = MAX_OPSET) -> LintResult:
    """Check a Q/DQ ONNX model (path or ``ModelProto``) against TensorRT's rules.

    Args:
        require_qdq: A model without any Q/DQ node is a finding (an INT8 build needs them).
        min_opset / max_opset: Accepted default-domain opset range.

    Raises:
        ModelError: The file is missing or not ONNX (findings are returned, not raised).
    """
    proto, source = _load(model)
    graph = proto.graph
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                default=0)
    qdq = [n for n in graph.node if n.op_type in _QDQ and n.domain in ("", "ai.onnx")]
    result = LintResult(source=source, opset=opset, qdq_nodes=len(qdq))
    add = result.findings.append
    if not min_opset <= opset <= max_opset:
        add(Finding("opset", "model", f"opset {opset} is outside {min_opset}..{max_opset} "
                    "(per-channel Q/DQ needs >= 13; TensorRT 10.3's parser reads up to 20)"))
    if require_qdq and not qdq:
        add(Finding("no-qdq", "model", "no QuantizeLinear/DequantizeLinear nodes: TensorRT "
                    "INT8 needs a Q/DQ model (quantize with the 'tensorrt' preset)"))
    consts = _constants(graph)
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in graph.node:
        domain = node.domain or "ai.onnx"
        if domain != "ai.onnx" or node.op_type not in TENSORRT_OPS:
            add(Finding("unsupported-op", _node_name(node),
                        f"{domain}::{node.op_type} is not in TensorRT's ONNX operator support"))
    for node in qdq:
        _check_qdq(node, consts, consumers, add)
    return result


def _check_qdq(node: Any, consts: dict[str, np.ndarray], consumers: dict[str, list[Any]],
               add: Any) -> None:
    """Zero points, dtypes and granularity of one Q or DQ node."""
    name = _node_name(node)
    x_name = node.input[0]
    scale = consts.get(node.input[1]) if len(node.input) > 1 else None
    zp_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    zero_point = consts.get(zp_name) if zp_name else None
    x_const = consts.get(x_name)
    if zp_name and zero_point is None:
        add(Finding("zero-point", name, "zero point is computed at run time; TensorRT needs a "
                    "constant all-zero (symmetric) zero point"))
    elif zero_point is not None:
        if np.any(zero_point != 0):
            add(Finding("zero-point", name, f"asymmetric quantization (zero point "
                        f"{zero_point.ravel()[:4].tolist()}...): TensorRT needs every zero "
                        "point 0"))
        if zero_point.dtype != np.int8 and not (node.op_type == "DequantizeLinear"
                                                and x_const is not None
                                                and x_const.dtype == np.int32):
            add(Finding("dtype", name, f"{zero_point.dtype} quantization: TensorRT's explicit "
                        "quantization is signed int8"))
    if node.op_type == "DequantizeLinear" and x_const is not None and x_const.dtype == np.int32:
        add(Finding("int32-bias", name, "int32 DequantizeLinear (a quantized bias): TensorRT "
                    "rejects it; keep the bias in float"))
        return
    if scale is None:
        add(Finding("scale", name, "scale is not a constant"))
        return
    is_weight = (node.op_type == "DequantizeLinear" and x_const is not None
                 and x_const.ndim >= 2
                 and any(c.op_type in _WEIGHT_CONSUMERS or c.op_type == "Transpose"
                         for c in consumers.get(node.output[0], [])))
    if is_weight:
        axis = _axis(node, x_const.ndim)
        matmul_cols = (axis == x_const.ndim - 1 and all(
            c.op_type == "MatMul" for c in consumers.get(node.output[0], [])))
        if scale.size == 1:
            add(Finding("weight-per-tensor", name, f"weight {x_name!r} has one scale; TensorRT "
                        "INT8 weights should be quantized per output channel (axis 0)"))
        elif (axis != 0 and not matmul_cols) or scale.size != x_const.shape[axis]:
            add(Finding("weight-axis", name, f"weight {x_name!r} {list(x_const.shape)} is "
                        f"quantized on axis {axis} with {scale.size} scales; TensorRT wants "
                        "per-channel on axis 0 (output channels)"))
    elif scale.size != 1:
        add(Finding("activation-per-channel", name, f"activation {x_name!r} has {scale.size} "
                    "scales; TensorRT quantizes activations per tensor"))


def check_tensorrt_compat(model: Any, *, require_qdq: bool = False) -> LintResult:
    """:func:`lint_tensorrt`, raising ``ModelError`` that lists every finding.

    Raises:
        ModelError: At least one finding (or an unreadable model).
    """
    result = lint_tensorrt(model, require_qdq=require_qdq)
    if not result.passed:
        lines = "\n  ".join(str(f) for f in result.findings)
        raise ModelError(f"{result.source}: not compatible with TensorRT "
                         f"({len(result.findings)} finding(s)):\n  {lines}")
    return result
