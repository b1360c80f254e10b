"""Pad the input channels of QDQ convs to ONNX Runtime's int8 kernel alignment.

Why: ORT's x86 QLinearConv runs a conv with signed symmetric weights through its direct
"ConvSym" kernels (indirection buffer, requantization fused) only when the input channels are a
multiple of 4 (MLAS ``MlasConvSymPackWSize``); otherwise it builds an im2col buffer and runs a
GEMM. A network's stem has 3 (RGB) or 1 (grey) input channels, so it always takes the im2col
path, and that path copies the input a few bytes at a time. Measured on an AMD EPYC Zen 3
(AVX2, no VNNI), 1 thread, 224 px: MobileNetV2's 3x3 stem took 556 us as im2col + GEMM and
373 us padded to 4 channels (the whole engine 1.47x -> 1.51x its FP32 twin); ResNet-18's 7x7
stem went the other way (2,440 -> 2,840 us). So the ORT backend pads only where it measures
faster on the machine that builds the engine (:func:`edgecompress.backends.ort_profile`).

Exact: the extra input channels hold the input's zero point (value 0 after DequantizeLinear)
and the extra weight channels hold the weight's zero point (value 0), so every product they add
is 0 in float and in the engine's integer arithmetic (``(x - zx) * (w - zw)``); the engine's
logits are bit-identical with and without the padding.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np

#: ORT's ConvSym kernels need input channels in multiples of this (x86 and arm64 dispatch).
CHANNEL_ALIGNMENT = 4


@dataclass(frozen=True)
class PaddedConv:
    """One conv whose input channels were padded (names as in the QDQ model)."""

    conv: str  #: the Conv node's name
    channels: int  #: input channels before padding
    padded_to: int  #: input channels after padding
    pad_node: str  #: the inserted Pad node's name


def _attr(node: Any, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def pad_candidates(model: Any, alignment: int = CHANNEL_ALIGNMENT) -> list[Any]:
    """Conv nodes of a QDQ model that this pass can pad: group 1, input and weight from
    DequantizeLinear (the input's per tensor), an int8/uint8 weight initializer whose input
    channels are not a multiple of ``alignment``."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    producers = {out: n for n in model.graph.node for out in n.output}
    found = []
    for node in model.graph.node:
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        if _attr(node, "group", 1) != 1:
            continue
        x_dq, w_dq = producers.get(node.input[0]), producers.get(node.input[1])
        if not (x_dq and w_dq and x_dq.op_type == w_dq.op_type == "DequantizeLinear"):
            continue
        if any(name in inits and int(np.prod(inits[name].dims)) != 1
               for name in x_dq.input[1:3]):
            continue  # a per-channel activation scale or zero point: not a Pad constant
        weight = inits.get(w_dq.input[0])
        if weight is None or len(weight.dims) < 3 or weight.dims[1] % alignment == 0:
            continue
        if numpy_helper.to_array(weight).dtype not in (np.int8, np.uint8):
            continue
        found.append(node)
    return found


def pad_conv_input_channels(model: Any, only: Collection[str] | None = None,
                            alignment: int = CHANNEL_ALIGNMENT) -> list[PaddedConv]:
    """Pad the input channels of :func:`pad_candidates` (those named in ``only``, when given)
    to a multiple of ``alignment``, in place; returns what was padded.

    Per conv: a ``Pad`` (constant = the input's zero point) on the quantized input, a fresh
    DequantizeLinear after it, and a new weight initializer with zero-point channels appended.
    Shared DequantizeLinear nodes and weights are left as they are for their other users.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {out: n for n in graph.node for out in n.output}
    done: list[PaddedConv] = []
    replaced: list[Any] = []  # DequantizeLinear nodes the padded convs no longer read
    for conv in pad_candidates(model, alignment):
        if not conv.name:
            conv.name = f"conv_{conv.output[0]}"  # a name is how the profile finds it
        if only is not None and conv.name not in only:
            continue
        x_dq, w_dq = producers[conv.input[0]], producers[conv.input[1]]
        weight = numpy_helper.to_array(inits[w_dq.input[0]])
        channels = weight.shape[1]
        extra = -channels % alignment
        w_zero = np.zeros(weight.shape[0], weight.dtype)
        if len(w_dq.input) > 2 and w_dq.input[2] in inits:
            w_zero = np.broadcast_to(numpy_helper.to_array(inits[w_dq.input[2]]).reshape(-1),
                                     (weight.shape[0],)).astype(weight.dtype)
        filler = np.broadcast_to(w_zero.reshape((-1,) + (1,) * (weight.ndim - 1)),
                                 (weight.shape[0], extra) + weight.shape[2:])
        tag = f"{conv.name}_chanpad"
        new_weight = numpy_helper.from_array(np.concatenate([weight, filler], axis=1),
                                             f"{w_dq.input[0]}_{tag}")
        graph.initializer.append(new_weight)
        new_w_dq = helper.make_node("DequantizeLinear", [new_weight.name, *w_dq.input[1:]],
                                    [f"{tag}_w"], name=f"{tag}_w_dq")
        new_w_dq.attribute.extend(w_dq.attribute)
        pads = np.zeros(2 * weight.ndim, np.int64)
        pads[weight.ndim + 1] = extra  # end of axis 1 (channels)
        pads_init = numpy_helper.from_array(pads, f"{tag}_pads")
        graph.initializer.append(pads_init)
        x_zero = [x_dq.input[2]] if len(x_dq.input) > 2 and x_dq.input[2] else []
        pad = helper.make_node("Pad", [x_dq.input[0], pads_init.name, *x_zero], [f"{tag}_x"],
                               name=tag, mode="constant")
        new_x_dq = helper.make_node("DequantizeLinear", [pad.output[0], *x_dq.input[1:]],
                                    [f"{tag}_dq"], name=f"{tag}_dq")
        new_x_dq.attribute.extend(x_dq.attribute)
        index = list(graph.node).index(conv)
        for offset, node in enumerate((pad, new_x_dq, new_w_dq)):
            graph.node.insert(index + offset, node)
        conv.input[0], conv.input[1] = new_x_dq.output[0], new_w_dq.output[0]
        replaced += [x_dq, w_dq]
        done.append(PaddedConv(conv=conv.name, channels=int(channels),
                               padded_to=int(channels + extra), pad_node=pad.name))
    _drop_if_unused(model, replaced)
    return done


def _names_read(graph: Any) -> set[str]:
    """Every tensor name a node of ``graph`` or of its subgraphs (If/Loop bodies) reads, and
    the graph's outputs."""
    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                names |= _names_read(sub)
    return names


def _drop_if_unused(model: Any, nodes: list[Any]) -> None:
    """Remove those of ``nodes`` (and their initializer inputs) that nothing reads any more;
    a DequantizeLinear another node still uses is kept."""
    graph = model.graph
    used = _names_read(graph)
    dead_inputs: set[str] = set()
    for node in {id(n): n for n in nodes}.values():
        if node.output[0] not in used:
            dead_inputs.update(node.input)
            graph.node.remove(node)
    used = _names_read(graph)
    for init in [i for i in graph.initializer if i.name in dead_inputs and i.name not in used]:
        graph.initializer.remove(init)
