"""Latency-aware FP32 fallback for ONNX Runtime int8 engines: which convs run slower as int8
kernels than as ORT's FP32 kernels on *this* CPU, measured with ORT's per-node profiler.

Why: without VNNI (AVX2) an int8 conv is not always faster. MobileNetV2's 3-channel stem
(an im2col with K = 27) profiled ~10x slower as QLinearConv than as ORT's FP32 NCHWc conv, yet
keeping the stem FP32 by rule made ResNet-18 (7x7 stem) slower. Measuring each conv in both
engines decides per network and per CPU. The per-node time ignores the Q/DQ a float island
adds around itself, so the end-to-end ratio (interleaved rounds) is what judges the result.

Matching: the (QLinear)Conv nodes of the two ORT-optimized graphs are paired in graph order by
kernel shape, strides and group; a fused QLinearConv keeps the exporter's node name
(``node_<FX name>``), which names the PyTorch module. Unpaired convs: nothing falls back.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np


def node_times(path: Path, x1: np.ndarray, runs: int, prefix: Path,
               disabled: tuple[str, ...] = ()) -> dict[str, float]:
    """Mean kernel microseconds per run, by node name of the optimized graph (1 thread)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.enable_profiling = True
    so.profile_file_prefix = str(prefix)
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(disabled))
    name = sess.get_inputs()[0].name
    for _ in range(runs):
        sess.run(None, {name: x1})
    events = json.loads(Path(sess.end_profiling()).read_text())
    out: dict[str, float] = defaultdict(float)
    for ev in events:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            out[ev["name"][:-len("_kernel_time")]] += ev["dur"] / runs
    return dict(out)


def conv_nodes(optimized: Path) -> list[tuple[str, tuple[Any, ...]]]:
    """(node name, (kernel_shape, strides, group)) of every Conv / QLinearConv, graph order."""
    import onnx

    out = []
    for node in onnx.load(str(optimized)).graph.node:
        if node.op_type not in ("Conv", "QLinearConv"):
            continue
        attrs = {a.name: a for a in node.attribute}
        sig = (tuple(attrs["kernel_shape"].ints) if "kernel_shape" in attrs else None,
               tuple(attrs["strides"].ints) if "strides" in attrs else (1, 1),
               attrs["group"].i if "group" in attrs else 1)
        out.append((node.name, sig))
    return out


def _layer_of(int8_node: str, fx_to_layer: dict[str, str]) -> str | None:
    """``node_conv2d_7_token_12`` (ORT's fused QLinearConv) -> the module of FX node
    ``conv2d_7`` (the exporter names ONNX nodes ``node_<fx name>``)."""
    name = re.sub(r"_token_\d+$", "", int8_node)
    name = name[len("node_"):] if name.startswith("node_") else name
    return fx_to_layer.get(name)


def pair_convs(fp32_opt: Path, int8_opt: Path) -> list[tuple[str, str]] | None:
    """(FP32 node, int8 node) pairs: each FP32 conv, in graph order, with the first unpaired
    int8 conv of the same kernel/strides/group (the two graphs may order parallel branches,
    e.g. a ResNet downsample, differently). None when the convs do not pair up."""
    f_nodes, i_nodes = conv_nodes(fp32_opt), conv_nodes(int8_opt)
    if len(f_nodes) != len(i_nodes):
        return None
    free = list(i_nodes)
    pairs = []
    for f_name, sig in f_nodes:
        match = next((node for node in free if node[1] == sig), None)
        if match is None:
            return None
        free.remove(match)
        pairs.append((f_name, match[0]))
    return pairs


def slower_in_int8(fp32: tuple[Path, Path], int8: tuple[Path, Path], fx_to_layer: dict[str, str],
                   x1: np.ndarray, runs: int, work: Path, int8_disabled: tuple[str, ...] = (),
                   margin: float = 1.25) -> dict[str, Any]:
    """The conv layers whose int8 kernel took more than ``margin`` x their FP32 kernel's time.

    The margin is there because a float island adds a DequantizeLinear, a QuantizeLinear and
    NCHWc reorders around itself, and per-node times of kernels this close are noise: with
    margin 1 a run kept 7 depthwise convs that were 0-17 % slower in int8 and the engine lost
    (MobileNetV2 1.44x -> 1.24x FP32).

    ``fp32`` / ``int8``: (model, ORT-optimized model); ``fx_to_layer``: FX node name of each
    conv in the converted int8 model -> its module name (what ``keep_fp32`` / ``skip`` take).
    """
    pairs = pair_convs(fp32[1], int8[1])
    if pairs is None:
        return {"layers": [], "matched": False, "reason": "the convs of the two graphs differ"}
    f_us = node_times(fp32[0], x1, runs, work / "prof_fp32")
    i_us = node_times(int8[0], x1, runs, work / "prof_int8", int8_disabled)
    kinds = {name: conv_kind(sig, first=index == 0)
             for index, (name, sig) in enumerate(conv_nodes(fp32[1]))}
    per_layer = [{"layer": _layer_of(i_name, fx_to_layer), "kind": kinds[f_name],
                  "fp32_node": f_name, "int8_node": i_name,
                  "fp32_us": round(f_us.get(f_name, 0.0), 1),
                  "int8_us": round(i_us.get(i_name, 0.0), 1)} for f_name, i_name in pairs]
    slower = [row["layer"] for row in per_layer
              if row["layer"] and row["int8_us"] > margin * row["fp32_us"] > 0]
    return {"layers": slower, "margin": margin,
            "matched": all(row["layer"] for row in per_layer),
            "by_kind": time_by_kind(per_layer), "per_layer": per_layer}


def conv_kind(sig: tuple[Any, ...], first: bool) -> str:
    """``stem`` (the first conv: 1-3 input channels), ``depthwise`` (grouped), ``1x1`` or
    ``kxk`` (dense), from a :func:`conv_nodes` signature."""
    kernel, _, group = sig
    if first:
        return "stem"
    if group > 1:
        return "depthwise"
    return "1x1" if kernel and all(k == 1 for k in kernel) else "kxk"


def time_by_kind(per_layer: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Profiled FP32 and int8 kernel time per conv kind, and their ratio (where the int8
    engine gains and where it does not)."""
    out: dict[str, dict[str, float]] = {}
    for row in per_layer:
        agg = out.setdefault(row["kind"], {"convs": 0, "fp32_us": 0.0, "int8_us": 0.0})
        agg["convs"] += 1
        agg["fp32_us"] += row["fp32_us"]
        agg["int8_us"] += row["int8_us"]
    for agg in out.values():
        agg["fp32_us"], agg["int8_us"] = round(agg["fp32_us"], 1), round(agg["int8_us"], 1)
        agg["fp32_over_int8"] = round(agg["fp32_us"] / agg["int8_us"], 2) if agg["int8_us"] else 0
    return out
