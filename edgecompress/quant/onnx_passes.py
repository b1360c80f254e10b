"""ONNX passes for QDQ models on ONNX Runtime: the uint8 activation rewrite and the int8-kernel
census that proves a quantized model really runs int8 kernels.

Why the rewrite: ONNX Runtime's x86 kernels multiply uint8 activations by int8 weights
(``vpdpbusd``); a QDQ group with int8 activations (what TensorRT and symmetric schemes produce)
fuses for only part of the convs and can end up slower than FP32. Re-expressing a symmetric int8
activation Q/DQ pair as uint8 with zero point + 128 and the same scale is exact:
``(q + 128 - (z + 128)) * s == (q - z) * s`` for every representable value.

Why the census: a QDQ model whose groups do not match ORT's fusion rules still runs, in FP32,
with extra Q/DQ work, i.e. silently slower and no smaller in compute. Counting the fused int8 ops
in ORT's own optimized graph (``SessionOptions.optimized_model_filepath``) is the only reliable
check, because fusion is decided by ORT at load time.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

#: ORT CPU ops that compute in int8/uint8 (contrib ops included).
INT8_KERNELS = frozenset({
    "QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QLinearAdd",
    "QLinearMul", "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat",
    "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QAttention", "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat", "QLinearReduceMean", "NhwcQLinearConv",
})  # QEmbedLayerNormalization (int8 embedding tables) is counted apart, in int8_embeddings
#: Compute-heavy float ops that should have become int8 kernels in a quantized model.
FLOAT_COMPUTE = frozenset({"Conv", "FusedConv", "Gemm", "MatMul", "FusedMatMul", "FusedGemm",
                           "ConvTranspose", "Attention"})
#: Embedding lookups: float when their table is a float initializer (text encoders).
EMBEDDING_OPS = frozenset({"Gather", "EmbedLayerNormalization"})


def _initializers(model: Any) -> dict[str, Any]:
    return {init.name: init for init in model.graph.initializer}


def rewrite_int8_activations_to_uint8(model: Any) -> int:
    """Turn int8 *activation* QuantizeLinear/DequantizeLinear pairs into uint8 in place.

    Weight DequantizeLinear nodes (whose input is an initializer) keep int8: ORT wants signed
    weights. Returns the number of Q/DQ nodes rewritten.
    """
    from onnx import TensorProto, numpy_helper

    inits = _initializers(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    renamed: dict[str, str] = {}
    retyped: set[str] = set()
    rewritten = 0

    def uint8_zero_point(name: str) -> str | None:
        init = inits.get(name)
        if init is None or init.data_type != TensorProto.INT8:
            return None
        if name not in renamed:
            zp = numpy_helper.to_array(init).astype(np.int16) + 128
            new = numpy_helper.from_array(zp.astype(np.uint8), name=f"{name}_uint8")
            model.graph.initializer.append(new)
            inits[new.name] = new
            renamed[name] = new.name
        return renamed[name]

    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        src = node.input[0]
        if node.op_type == "DequantizeLinear":
            producer = producers.get(src)
            # Only DQs fed by an activation Q; a weight DQ reads an initializer.
            if src in inits or producer is None or producer.op_type != "QuantizeLinear":
                continue
        elif src in inits:
            continue
        new_zp = uint8_zero_point(node.input[2])
        if new_zp is not None:
            node.input[2] = new_zp
            rewritten += 1
            if node.op_type == "QuantizeLinear":
                retyped.add(node.output[0])
    # The exporter recorded the Q outputs' types; they are uint8 now.
    for info in list(model.graph.value_info) + list(model.graph.output):
        if info.name in retyped:
            info.type.tensor_type.elem_type = TensorProto.UINT8
    used = {name for node in model.graph.node for name in node.input}
    for init in [i for i in model.graph.initializer if i.name in renamed and i.name not in used]:
        model.graph.initializer.remove(init)
    return rewritten


#: Largest |int8 weight code| that ORT's non-VNNI u8 x s8 kernels multiply without saturating
#: their 16-bit pair sums (255 x 63 x 2 = 32,130 <= 32,767); see :mod:`edgecompress.isa`.
SAFE_WEIGHT_CODE = 63


def rewrite_wide_int8_weights_to_uint8(model: Any, max_code: int = SAFE_WEIGHT_CODE) -> int:
    """Re-express full-range int8 *weights* as uint8 (codes and zero points + 128) in place.

    For CPUs whose u8 x s8 int8 kernels saturate (x86 without VNNI): ONNX Runtime then runs
    its u8 x u8 kernels, which widen to 16 bits before multiplying and are exact, at some speed
    cost (measured 1.5x slower than u8 x s8 on a ResNet here). Exact like the activation
    rewrite: ``(w + 128 - (z + 128)) * s == (w - z) * s``. Weights already within
    ``max_code`` (the ``ort-x86-avx2`` preset's 7-bit weights) are left alone: they cannot
    saturate and keep the faster kernels. Returns the number of weight tensors rewritten.
    """
    from onnx import TensorProto, numpy_helper

    inits = _initializers(model)
    rewritten = 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3:
            continue
        weight, zero = inits.get(node.input[0]), inits.get(node.input[2])
        if weight is None or zero is None or weight.data_type != TensorProto.INT8:
            continue
        codes = numpy_helper.to_array(weight).astype(np.int16)
        if codes.size == 0 or int(np.abs(codes).max()) <= max_code:
            continue
        zp = numpy_helper.to_array(zero).astype(np.int16)
        for index, (name, values) in enumerate(((node.input[0], codes), (node.input[2], zp))):
            new = numpy_helper.from_array((values + 128).astype(np.uint8), name=f"{name}_u8w")
            model.graph.initializer.append(new)
            node.input[2 * index] = new.name
        rewritten += 1
    used = {name for node in model.graph.node for name in node.input}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)
    return rewritten


def quantize_biases(model: Any) -> int:
    """Give every quantized Conv/Gemm a float bias as int32 DequantizeLinear, in place.

    ``bias_q = round(bias / (x_scale * w_scale))`` with zero point 0, per output channel, the
    form ONNX Runtime's QLinearConv/QGemm take. ORT can do this itself (its
    WeightBiasQuantization optimizer), but that optimizer also quantizes the *float* weights of
    layers kept in FP32 on purpose; doing it here lets the engine disable it. A node counts as
    quantized when both its input and its weight come from DequantizeLinear. Returns the number
    of biases quantized.
    """
    from onnx import TensorProto, helper, numpy_helper

    inits = _initializers(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    done = 0
    new_nodes = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or not node.input[2]:
            continue
        x_dq, w_dq = producers.get(node.input[0]), producers.get(node.input[1])
        bias = inits.get(node.input[2])
        if (x_dq is None or w_dq is None or bias is None or x_dq.op_type != "DequantizeLinear"
                or w_dq.op_type != "DequantizeLinear" or bias.data_type != TensorProto.FLOAT):
            continue
        x_scale, w_scale = inits.get(x_dq.input[1]), inits.get(w_dq.input[1])
        if x_scale is None or w_scale is None:
            continue
        scale = (numpy_helper.to_array(x_scale).astype(np.float64).reshape(())
                 * numpy_helper.to_array(w_scale).astype(np.float64).reshape(-1))
        b = numpy_helper.to_array(bias).astype(np.float64)
        scale = np.broadcast_to(scale, b.shape).copy()
        scale[scale == 0] = 1e-12
        q = np.clip(np.round(b / scale), -(2**31), 2**31 - 1).astype(np.int32)
        base = f"{node.input[2]}_{node.name or done}"
        model.graph.initializer.extend([
            numpy_helper.from_array(q, name=f"{base}_int32"),
            numpy_helper.from_array(scale.astype(np.float32), name=f"{base}_scale"),
            numpy_helper.from_array(np.zeros_like(q), name=f"{base}_zero_point")])
        out = f"{base}_dequantized"
        new_nodes.append(helper.make_node(
            "DequantizeLinear", [f"{base}_int32", f"{base}_scale", f"{base}_zero_point"], [out],
            name=f"{base}_DequantizeLinear", axis=0))
        node.input[2] = out
        done += 1
    # Insert the new DQs at the front: their inputs are initializers, so order stays valid.
    for n in reversed(new_nodes):
        model.graph.node.insert(0, n)
    used = {name for node in model.graph.node for name in node.input}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)
    return done


def strip_metadata(model: Any) -> None:
    """Drop the exporter's per-node metadata (stack traces, scopes) and doc strings in place.

    The dynamo exporter records a Python stack trace on every node: for a small int8 model that
    is several times the size of its weights, and an engine file should be weights and graph.
    """
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    model.doc_string = ""


def activation_dtypes(model: Any) -> Counter[str]:
    """Count activation QuantizeLinear nodes by zero-point dtype (``int8``/``uint8``)."""
    from onnx import TensorProto

    inits = _initializers(model)
    out: Counter[str] = Counter()
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) >= 3:
            init = inits.get(node.input[2])
            if init is not None:
                out[TensorProto.DataType.Name(init.data_type).lower()] += 1
    return out


def kernel_census(optimized: Any) -> dict[str, Any]:
    """What ORT's optimized graph runs, for every model family: int8 kernels, and the layers
    and embedding tables left in float.

    A float layer is a compute node (:data:`FLOAT_COMPUTE`) whose input 1 is a weight: an
    initializer, directly or through a DequantizeLinear (QDQ graphs). Convs, Linears and ORT's
    fused Attention (packed Q/K/V weight) count; the activation x activation MatMuls inside
    attention are not layers and do not. Embedding lookups (:data:`EMBEDDING_OPS`) are float
    when their table is a float initializer.

    Returns:
        ``{"int8_kernels": {op: n}, "int8_total": n, "fp32_nodes": ["name (op)", ...],
        "fp32_embeddings": ["name (op)", ...], "int8_embeddings": n, "ops": {op: n}}``.
    """
    from onnx import TensorProto

    graph = optimized.graph
    inits = _initializers(optimized)
    weights = set(inits) | {n.output[0] for n in graph.node
                            if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    ops = Counter(node.op_type for node in graph.node)
    int8 = {op: n for op, n in sorted(ops.items()) if op in INT8_KERNELS}

    def label(node: Any) -> str:
        return f"{node.name or node.output[0]} ({node.op_type})"

    fp32 = [label(node) for node in graph.node
            if node.op_type in FLOAT_COMPUTE and any(i in weights for i in node.input[1:2])]
    float_tables = {name for name, init in inits.items() if init.data_type == TensorProto.FLOAT}
    int8_tables = {name for name, init in inits.items()
                   if init.data_type in (TensorProto.INT8, TensorProto.UINT8)}
    float_emb = [label(node) for node in graph.node
                 if node.op_type in EMBEDDING_OPS and any(i in float_tables
                                                          for i in node.input[:3])]
    int8_emb = ops.get("QEmbedLayerNormalization", 0) + sum(
        1 for node in graph.node if node.op_type == "Gather" and node.input[0] in int8_tables)
    return {"int8_kernels": int8, "int8_total": int(sum(int8.values())), "fp32_nodes": fp32,
            "fp32_embeddings": float_emb, "int8_embeddings": int(int8_emb),
            "ops": dict(sorted(ops.items()))}


def compute_node_count(model: Any) -> int:
    """Conv/linear-type nodes of a (QDQ or float) model: what should all become int8 kernels."""
    return sum(1 for n in model.graph.node if n.op_type in FLOAT_COMPUTE)


def load(path: Path) -> Any:
    """``onnx.load`` with the model's external data (none for our artifacts)."""
    import onnx

    return onnx.load(str(path))


def _const_ints(model: Any, name: str) -> list[int] | None:
    """The integer values of an initializer or Constant node output named ``name``."""
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return [int(v) for v in numpy_helper.to_array(init).reshape(-1)]
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return [int(v) for v in numpy_helper.to_array(attr.t).reshape(-1)]
    return None


def _ranks(model: Any) -> dict[str, int]:
    infos = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    return {i.name: len(i.type.tensor_type.shape.dim) for i in infos
            if i.type.HasField("tensor_type") and i.type.tensor_type.HasField("shape")}


def reduce_mean_to_global_pool(model: Any) -> int:
    """Rewrite ``ReduceMean(x, axes=[2, 3], keepdims=1)`` of a 4-D ``x`` as
    ``GlobalAveragePool(x)`` in place (the same values); returns the number rewritten.

    The dynamo exporter writes ``adaptive_avg_pool2d(x, 1)`` (squeeze-excitation, classifier
    heads) as ReduceMean, which ONNX Runtime's QDQ fusion does not turn into an int8 kernel:
    between a DequantizeLinear and a QuantizeLinear it ran in float, and slowly (NCHW reduce;
    EfficientNet-B0 at 224 px: 17 ReduceMean nodes ~15 % of the int8 engine's time, AMD EPYC
    Zen 3, AVX2, 1 thread). ``DQ -> GlobalAveragePool -> Q`` fuses into
    QLinearGlobalAveragePool.
    """
    ranks = _ranks(model)
    done = 0
    for node in model.graph.node:
        if node.op_type != "ReduceMean" or ranks.get(node.input[0]) != 4:
            continue
        keepdims = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
        if len(node.input) > 1 and node.input[1]:
            axes = _const_ints(model, node.input[1])
        else:
            axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
        if keepdims != 1 or axes is None or sorted(a % 4 for a in axes) != [2, 3]:
            continue
        node.op_type = "GlobalAveragePool"
        del node.input[1:]
        del node.attribute[:]
        node.domain = ""
        done += 1
    if done:
        used = {name for n in model.graph.node for name in n.input}
        for node in [n for n in model.graph.node
                     if n.op_type == "Constant" and not any(o in used for o in n.output)]:
            model.graph.node.remove(node)
        for init in [i for i in model.graph.initializer if i.name not in used]:
            model.graph.initializer.remove(init)
    return done

