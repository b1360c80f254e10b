"""Cross-check latency with the benchmark tool that ships inside the ai-edge-litert wheel.

ai-edge-litert 2.3.0 bundles ``ai_edge_litert/tools/benchmark_litert_model.py`` (a Python
mirror of the C++ ``benchmark_litert_model``: the CompiledModel API, CPU accelerator, XNNPACK,
``--num_threads``); the wheel has no C++ ``benchmark_model`` binary. It runs in a subprocess so
its ``logging.basicConfig`` and random inputs do not touch this process, and its output is read
by the same parser as the phone's ``benchmark_model`` (:func:`parse_benchmark_output`).

Its numbers are printed with two decimals in ms, so for a ~10 us model they are coarse; they
are a sanity check of the project's harness (same order of magnitude), not a replacement.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

from edgecompress.bench.adb import parse_benchmark_output
from edgecompress.errors import BackendUnavailable, ConfigError, ModelError

TOOL_MODULE = "ai_edge_litert.tools.benchmark_litert_model"


def find_tool() -> str:
    """The module name of the bundled benchmark tool.

    Raises:
        BackendUnavailable: ai-edge-litert (or the tool inside it) is not installed.
    """
    try:
        spec = importlib.util.find_spec(TOOL_MODULE)
    except ImportError:
        spec = None
    if spec is None:
        raise BackendUnavailable(f"the LiteRT benchmark tool ({TOOL_MODULE}) is not installed; "
                                 "install it with: pip install 'edgecompress[tflite]'")
    return TOOL_MODULE


def tool_command(model: Path, *, threads: int = 1, warmup: int = 20,
                 runs: int = 200) -> list[str]:
    """``python -m ai_edge_litert.tools.benchmark_litert_model --model ... --num_threads ...``."""
    if threads < 1 or runs < 2 or warmup < 0:
        raise ConfigError(f"LiteRT benchmark: threads ({threads}) >= 1, runs ({runs}) >= 2 and "
                          f"warmup ({warmup}) >= 0 required")
    return [sys.executable, "-m", find_tool(), f"--model={model}", f"--num_threads={threads}",
            f"--warmup_runs={warmup}", f"--num_runs={runs}"]


def run_litert_benchmark(model: Path, *, threads: int = 1, warmup: int = 20, runs: int = 200,
                         timeout: float = 300.0) -> dict[str, Any]:
    """Run the bundled tool on ``model`` and parse its output (times in ms).

    Raises:
        BackendUnavailable: The tool is missing.
        ModelError: The tool failed (its last lines are quoted).
    """
    model = Path(model)
    if not model.is_file():
        raise ModelError(f"TFLite model not found: {model}")
    cmd = tool_command(model, threads=threads, warmup=warmup, runs=runs)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    text = proc.stdout + "\n" + proc.stderr
    if proc.returncode != 0:
        tail = " | ".join(text.strip().splitlines()[-3:])
        raise ModelError(f"LiteRT benchmark tool failed on {model} (exit {proc.returncode}): "
                         f"{tail}")
    result = parse_benchmark_output(text)
    result["threads"] = result.get("threads") or threads
    return result
