"""Build-time choices an ONNX Runtime int8 engine makes by measuring on this CPU.

Which form of a graph ORT runs fastest is decided by its kernels, and those differ per
instruction set (MLAS has separate AVX2, AVX-VNNI, AVX-512 and arm64 kernels, with different
shape conditions). Where two exact forms of the same graph exist, the backend times both
here, node by node with ORT's own profiler, and keeps the faster one: the engine is then right
for the CPU that builds it (a local target), and is numerically the same either way.

Today one choice is made this way: whether to pad a conv's input channels to a multiple of 4
(:mod:`edgecompress.quant.channel_pad`).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: Keep a padded conv only when it (with its Pad) takes at most this fraction of the plain
#: conv's time: a tie is not worth the extra node, and small differences are noise.
PAD_MARGIN = 0.95
#: Timed runs per session (after WARMUP_RUNS untimed ones); the two sessions alternate.
PROFILE_RUNS = 12
WARMUP_RUNS = 3

_NP_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32,
              "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(bool)": np.bool_}


def example_feed(session: Any) -> dict[str, np.ndarray] | None:
    """One batch-1 input per model input, from the session's declared shapes; None when a
    non-batch dimension is symbolic (nothing sensible to time then)."""
    rng = np.random.default_rng(0)
    feed = {}
    for inp in session.get_inputs():
        shape = list(inp.shape)
        if shape and not isinstance(shape[0], int):
            shape[0] = 1
        if not all(isinstance(d, int) and d > 0 for d in shape):
            return None
        dtype = _NP_DTYPES.get(inp.type)
        if dtype is None:
            return None
        values = rng.random(shape) if np.issubdtype(dtype, np.floating) else np.zeros(shape)
        feed[inp.name] = values.astype(dtype)
    return feed


def profile_nodes(make_session: Callable[[Path, Path], Any], models: Sequence[Path],
                  runs: int = PROFILE_RUNS) -> list[dict[str, float]] | None:
    """Median kernel microseconds per node of each model, keyed by node name in ORT's
    optimized graph. The sessions run alternately, so background load hits each alike.
    ``make_session(path, profile_prefix)`` opens a session with profiling on. None when no
    feed can be made."""
    with tempfile.TemporaryDirectory(prefix="ec-ortprof-") as tmp:
        sessions = [make_session(m, Path(tmp) / f"m{i}") for i, m in enumerate(models)]
        feed = example_feed(sessions[0])
        if feed is None:
            return None
        for _ in range(WARMUP_RUNS + runs):
            for session in sessions:
                session.run(None, feed)
        result = []
        for session in sessions:
            events = json.loads(Path(session.end_profiling()).read_text())
            per_node: dict[str, list[float]] = defaultdict(list)
            for ev in events:
                name = ev.get("name", "")
                if ev.get("cat") == "Node" and name.endswith("_kernel_time"):
                    per_node[name[:-len("_kernel_time")]].append(float(ev["dur"]))
            result.append({node: float(np.median(times[WARMUP_RUNS:]))
                           for node, times in per_node.items() if len(times) > WARMUP_RUNS})
        return result


def node_time(times: Mapping[str, float], name: str) -> float | None:
    """The time of the node ``name`` after ORT's fusions, which name the fused node
    ``<name>_token_<n>`` (QDQ Conv -> QLinearConv); None when absent."""
    found = [t for node, t in times.items()
             if node == name or (node.startswith(f"{name}_token_")
                                 and node[len(name) + 7:].isdigit())]
    return sum(found) if found else None


def faster_padding(plain_us: Mapping[str, float], padded_us: Mapping[str, float],
                   padded: Sequence[Any], margin: float = PAD_MARGIN) -> dict[str, dict]:
    """Per padded conv (:class:`~edgecompress.quant.channel_pad.PaddedConv`): its time plain
    and padded (the conv plus its Pad), and whether padding is kept (``padded <= margin x
    plain``). A conv missing from either profile is not padded."""
    choice = {}
    for conv in padded:
        plain, pad = node_time(plain_us, conv.conv), node_time(padded_us, conv.conv)
        if plain is None or pad is None:
            choice[conv.conv] = {"channels": conv.channels, "padded_to": conv.padded_to,
                                 "keep": False, "reason": "not found in ORT's profile"}
            continue
        pad += node_time(padded_us, conv.pad_node) or 0.0
        choice[conv.conv] = {"channels": conv.channels, "padded_to": conv.padded_to,
                             "plain_us": round(plain, 1), "padded_us": round(pad, 1),
                             "keep": pad <= margin * plain}
    return choice
