"""Latency on an Android phone: push a ``.tflite`` and TFLite's ``benchmark_model`` over adb.

``benchmark_model`` is TFLite's own C++ harness (prebuilt ``android_aarch64_benchmark_model``
from the TensorFlow/LiteRT nightlies, or built with bazel); it times ``Invoke()`` on the device
with XNNPACK and the given thread count, which is what an app sees. This module builds the adb
command lines (every device-side argument shell-quoted: ``adb shell`` joins its arguments into
one string for the device's shell), runs them, and parses the tool's text output into a latency
dict. The same parser reads ai-edge-litert's bundled Python benchmark
(:mod:`edgecompress.bench.litert_benchmark`) so both cross-check in one format.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecompress.errors import BackendUnavailable, ConfigError, DataError, ModelError

logger = logging.getLogger(__name__)

BENCHMARK_MODEL_ENV = "EDGECOMPRESS_BENCHMARK_MODEL"
DEFAULT_WORKDIR = "/data/local/tmp/edgecompress"

_COUNT = re.compile(r"count=(\d+)\s+first=([\d.]+)\s+curr=([\d.]+)\s+min=([\d.]+)\s+"
                    r"max=([\d.]+)\s+avg=([\d.]+)\s+std=([\d.]+)")
_TIMINGS = re.compile(r"Inference timings in us:\s*(.*)")
_PAIR = re.compile(r"([A-Za-z][A-Za-z ()]*?):\s*([\d.eE+-]+)")
_THREADS = re.compile(r"Num threads:\s*\[(\d+)\]")
# ai-edge-litert's benchmark_litert_model.py prints "Inference (avg):  0.02 ms (200 runs)".
_PY_LINE = re.compile(r"^(Model initialization|Warmup \(first\)|Warmup \(avg\)|"
                      r"Inference \((?:avg|min|max|median|std|p5|p95)\)):\s*([\d.]+)\s*ms"
                      r"(?:\s*\((\d+) runs\))?", re.M)
_PY_KEYS = {"Model initialization": "init_ms", "Warmup (first)": "first_inference_ms",
            "Warmup (avg)": "warmup_avg_ms", "Inference (avg)": "mean",
            "Inference (min)": "min", "Inference (max)": "max", "Inference (median)": "p50",
            "Inference (std)": "stdev", "Inference (p5)": "p5", "Inference (p95)": "p95"}


def parse_benchmark_output(text: str) -> dict[str, Any]:
    """Turn ``benchmark_model`` (or ``benchmark_litert_model.py``) output into a latency dict.

    All times are milliseconds. From ``benchmark_model``: the per-run statistics of the last
    ``count=... avg=... std=...`` line (the timed runs; the first such line is the warm-up)
    and the ``Inference timings in us: Init: ..., First inference: ..., Warmup (avg): ...,
    Inference (avg): ...`` summary. ``p50`` is only known from the Python tool (C++ prints no
    median); it is ``None`` otherwise.

    Returns:
        ``{"mean", "stdev", "min", "max", "p50", "runs", "init_ms", "first_inference_ms",
        "warmup_avg_ms", "threads", "xnnpack", "tool"}``.

    Raises:
        DataError: The text holds no timings (the tool failed; its last lines are quoted).
    """
    if "BENCHMARK RESULTS" in text and _PY_LINE.search(text):
        return _parse_python_tool(text)
    counts = _COUNT.findall(text)
    summary = _TIMINGS.search(text)
    if not counts or not summary:
        tail = " | ".join(line.strip() for line in text.strip().splitlines()[-3:])
        raise DataError(f"benchmark output holds no 'Inference timings in us' line: {tail!r}")
    pairs = {k.strip(): float(v) for k, v in _PAIR.findall(summary.group(1))}
    count, _first, _curr, vmin, vmax, avg, std = counts[-1]
    threads = _THREADS.search(text)
    us = 1e-3
    return {
        "mean": float(avg) * us, "stdev": float(std) * us, "min": float(vmin) * us,
        "max": float(vmax) * us, "p50": None, "runs": int(count),
        "init_ms": pairs["Init"] * us if "Init" in pairs else None,
        "first_inference_ms": (pairs["First inference"] * us
                               if "First inference" in pairs else None),
        "warmup_avg_ms": pairs["Warmup (avg)"] * us if "Warmup (avg)" in pairs else None,
        "threads": int(threads.group(1)) if threads else None,
        "xnnpack": "XNNPACK delegate" in text,
        "tool": "benchmark_model",
    }


def _parse_python_tool(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {"p50": None, "runs": None, "init_ms": None,
                           "first_inference_ms": None, "warmup_avg_ms": None}
    for label, value, runs in _PY_LINE.findall(text):
        out[_PY_KEYS[label]] = float(value)
        if label == "Inference (avg)" and runs:
            out["runs"] = int(runs)
    threads = re.search(r"Num threads:\s*(\d+)", text)
    out.update({"threads": int(threads.group(1)) if threads else None,
                "xnnpack": None, "tool": "benchmark_litert_model"})
    for key in ("mean", "stdev", "min", "max"):
        out.setdefault(key, None)
    return out


# ----------------------------------------------------------------------------------------------
# Command lines


@dataclass(frozen=True)
class AdbPlan:
    """Every adb invocation of one benchmark, as argument lists (no shell on this side)."""

    setup: list[list[str]]
    run: list[str]
    cleanup: list[list[str]]

    def all(self) -> list[list[str]]:
        """In execution order."""
        return [*self.setup, self.run, *self.cleanup]


def _adb(serial: str | None) -> list[str]:
    return ["adb", "-s", serial] if serial else ["adb"]


@dataclass(frozen=True)
class InputSpec:
    """One model input as ``benchmark_model`` is told about it: the flatbuffer's tensor name,
    its shape, and for an integer input the inclusive range its made-up values are drawn from
    (token ids inside the vocabulary, an attention mask of ones), else None."""

    name: str
    shape: tuple[int, ...]
    value_range: tuple[int, int] | None = None


def benchmark_args(graph: str, *, threads: int, warmup: int, runs: int,
                   use_xnnpack: bool = True,
                   inputs: Sequence[InputSpec] | None = None) -> list[str]:
    """``benchmark_model`` flags: XNNPACK, the thread count and exactly ``runs`` timed runs;
    with ``inputs``, their names and shapes (``--input_layer``, ``--input_layer_shape``) and
    the value ranges of integer inputs (``--input_layer_value_range``), which the tool honours
    only for inputs named this way. Without ranges it fills integer inputs with random values of
    their whole type, which sends token ids outside the embedding table."""
    if threads < 1 or runs < 1 or warmup < 0:
        raise ConfigError(f"benchmark_model: threads ({threads}) and runs ({runs}) must be >= 1 "
                          f"and warmup ({warmup}) >= 0")
    flags = [f"--graph={graph}", f"--num_threads={threads}",
             f"--use_xnnpack={'true' if use_xnnpack else 'false'}",
             f"--warmup_runs={warmup}", "--warmup_min_secs=0", f"--num_runs={runs}",
             "--min_secs=0"]
    if inputs:
        for spec in inputs:
            if any(c in spec.name for c in ",:") or not spec.name:
                raise ConfigError(f"benchmark_model: input name {spec.name!r} cannot be passed "
                                  "in --input_layer (it holds ',' or ':')")
        flags.append("--input_layer=" + ",".join(s.name for s in inputs))
        flags.append("--input_layer_shape=" + ":".join(",".join(str(d) for d in s.shape)
                                                      for s in inputs))
        ranges = [f"{s.name},{s.value_range[0]},{s.value_range[1]}" for s in inputs
                  if s.value_range is not None]
        if ranges:
            flags.append("--input_layer_value_range=" + ":".join(ranges))
    return flags


def tflite_inputs(model: Path, value_ranges: Sequence[tuple[int, int] | None]
                  ) -> list[InputSpec]:
    """The flatbuffer's inputs in signature order (the order feeds are given in), each with the
    value range at its position."""
    from edgecompress.backends import get_backend

    with get_backend("tflite").load(Path(model)) as runner:
        details = runner.input_details
    if len(details) != len(value_ranges):
        raise ConfigError(f"{Path(model).name}: {len(details)} inputs, but value ranges for "
                          f"{len(value_ranges)}")
    return [InputSpec(str(d["name"]), tuple(int(x) for x in d["shape"]), r)
            for d, r in zip(details, value_ranges, strict=True)]


def plan_adb_benchmark(model: Path, benchmark_model: Path, *, threads: int, warmup: int = 20,
                       runs: int = 200, serial: str | None = None,
                       workdir: str = DEFAULT_WORKDIR,
                       inputs: Sequence[InputSpec] | None = None) -> AdbPlan:
    """The adb commands that push ``model`` and ``benchmark_model``, run, and clean up.

    Nothing is pulled back: the measurement is the tool's stdout.
    """
    adb = _adb(serial)
    q = shlex.quote
    remote_model = f"{workdir.rstrip('/')}/model.tflite"
    remote_tool = f"{workdir.rstrip('/')}/benchmark_model"
    setup = [
        [*adb, "shell", f"mkdir -p {q(workdir)}"],
        [*adb, "push", str(model), remote_model],
        [*adb, "push", str(benchmark_model), remote_tool],
        [*adb, "shell", f"chmod 755 {q(remote_tool)}"],
    ]
    flags = benchmark_args(remote_model, threads=threads, warmup=warmup, runs=runs,
                           inputs=inputs)
    run = [*adb, "shell", " ".join(q(a) for a in [remote_tool, *flags])]
    cleanup = [[*adb, "shell", f"rm -f {q(remote_model)}"]]
    return AdbPlan(setup=setup, run=run, cleanup=cleanup)


# ----------------------------------------------------------------------------------------------
# Live runs


def adb_devices(timeout: float = 10.0) -> list[str]:
    """Serials of attached devices in state ``device`` (not offline/unauthorized)."""
    proc = subprocess.run(["adb", "devices"], capture_output=True, text=True, timeout=timeout,
                          check=False)
    serials = []
    for line in proc.stdout.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[1] == "device":
            serials.append(parts[0])
    return serials


def adb_availability(serial: str | None = None) -> tuple[bool, str]:
    """Whether an adb benchmark can run now, else why not (names the missing thing)."""
    if shutil.which("adb") is None:
        return False, "adb not found on PATH (install Android platform-tools)"
    try:
        serials = adb_devices()
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"adb devices failed: {exc}"
    if not serials:
        return False, "no adb device attached (adb devices lists none in state 'device')"
    if serial and serial not in serials:
        return False, f"adb device {serial!r} not attached (attached: {', '.join(serials)})"
    if not serial and len(serials) > 1:
        return False, f"several adb devices attached ({', '.join(serials)}); set the serial"
    return True, ""


def find_benchmark_model(path: str | Path | None = None) -> Path:
    """The Android ``benchmark_model`` binary: ``path``, else ``$EDGECOMPRESS_BENCHMARK_MODEL``.

    Raises:
        ConfigError: Not given, or not a file.
    """
    raw = path or os.environ.get(BENCHMARK_MODEL_ENV)
    if not raw:
        raise ConfigError(f"no benchmark_model binary for the adb benchmark: set "
                          f"{BENCHMARK_MODEL_ENV} to TFLite's android_aarch64_benchmark_model")
    found = Path(raw)
    if not found.is_file():
        raise ConfigError(f"benchmark_model binary not found: {found}")
    return found


def run_adb_benchmark(model: Path, *, threads: int, warmup: int = 20, runs: int = 200,
                      serial: str | None = None, workdir: str = DEFAULT_WORKDIR,
                      benchmark_model: str | Path | None = None,
                      timeout: float = 600.0,
                      inputs: Sequence[InputSpec] | None = None) -> dict[str, Any]:
    """Run the plan on the device and return :func:`parse_benchmark_output`'s dict.

    Raises:
        BackendUnavailable: adb or the device is missing.
        ModelError: A command failed on the device (its stderr is quoted).
    """
    ok, why = adb_availability(serial)
    if not ok:
        raise BackendUnavailable(f"adb benchmark of {model.name}: {why}")
    plan = plan_adb_benchmark(Path(model), find_benchmark_model(benchmark_model),
                              threads=threads, warmup=warmup, runs=runs, serial=serial,
                              workdir=workdir, inputs=inputs)
    for cmd in plan.setup:
        _check(cmd, timeout)
    try:
        output = _check(plan.run, timeout)
    finally:
        for cmd in plan.cleanup:
            subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    return parse_benchmark_output(output)


def _check(cmd: list[str], timeout: float) -> str:
    logger.debug("running %s", shlex.join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ModelError(f"{shlex.join(cmd)} failed (exit {proc.returncode}): {' | '.join(tail)}")
    return proc.stdout + proc.stderr


def measure_over_adb(artifact: Path, profile: Any, *, threads: int, warmup: int,
                     runs: int, value_ranges: Sequence[tuple[int, int] | None] | None = None
                     ) -> dict[str, Any]:
    """Time ``artifact`` on the profile's phone; the bench stage's measurement dict.

    ``benchmark_model`` only times the model (random inputs, no outputs come back), so
    ``accuracy`` and ``logits`` are None and ``p50`` is None (it prints no median: gates and
    speedups use the mean). ``value_ranges`` (per input, in feed order; a text model's token
    ids and mask) keep its made-up integer inputs valid. The binary is found through
    ``$EDGECOMPRESS_BENCHMARK_MODEL``.
    """
    conn = profile.connection
    inputs = tflite_inputs(Path(artifact), value_ranges) if value_ranges else None
    stats = run_adb_benchmark(Path(artifact), threads=threads, warmup=warmup, runs=runs,
                              serial=conn.serial, workdir=conn.workdir or DEFAULT_WORKDIR,
                              inputs=inputs)
    latency = {key: stats.get(key) for key in ("p50", "mean", "stdev", "min", "max", "runs")}
    latency.update({"p90": None, "p99": None, "threads": threads, "warmup": warmup,
                    "source": "benchmark_model over adb"})
    return {"accuracy": None, "logits": None, "latency_ms": latency, "samples_ms": [],
            "remote": {"kind": "adb", "serial": conn.serial, "tool": stats.get("tool"),
                       "init_ms": stats.get("init_ms")}}
