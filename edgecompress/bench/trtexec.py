"""``trtexec``: build and time a TensorRT engine with NVIDIA's own tool, and read its summary.

trtexec is on every JetPack image (``/usr/src/tensorrt/bin/trtexec``) and needs no Python
bindings, so it is the lowest-friction way to time an ONNX model on a board. Its numbers are
GPU compute times measured with CUDA events, without host-to-device copies: the report says so
(``"source": "trtexec GPU Compute Time"``) so they are not mistaken for end-to-end latency.

Two things change across versions and are handled here: TensorRT 10 still takes ``--int8`` /
``--fp16`` (weakly typed networks); TensorRT 11 builds strongly typed networks only, so INT8
comes from the model's Q/DQ nodes and those flags are gone. Summaries differ too: TensorRT 10
prints percentile(90%/95%/99%), TensorRT 8 only percentile(99%).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgecompress.errors import ConfigError, ModelError

DEFAULT_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_STAT = re.compile(rf"(min|max|mean|median|percentile\(({_NUMBER})%\))\s*=?\s*({_NUMBER})\s*ms")
_LINE = re.compile(r"^(?:\[[^\]]*\]\s*)*(?P<name>[A-Za-z][A-Za-z0-9 \-]*?)\s*:\s*"
                   r"(?P<body>min\b.*)$")
_THROUGHPUT = re.compile(rf"Throughput:\s*({_NUMBER})\s*qps")
_TOTAL = re.compile(rf"Total (Host Walltime|GPU Compute Time):\s*({_NUMBER})\s*s\b")
_STATUS = re.compile(r"&&&& (PASSED|FAILED|RUNNING) TensorRT\.trtexec \[TensorRT v(\d+)\]")
_VERSION_LINE = re.compile(r"TensorRT version:\s*(\d+)\.(\d+)\.(\d+)")

#: Summary lines kept, by the key used in :class:`TrtexecSummary`.
_SECTIONS = {"GPU Compute Time": "gpu_compute_ms", "Latency": "latency_ms",
             "End-to-End Host Latency": "end_to_end_ms", "Enqueue Time": "enqueue_ms",
             "H2D Latency": "h2d_ms", "D2H Latency": "d2h_ms"}


@dataclass
class TrtexecSummary:
    """The "Performance summary" of one trtexec run; times in ms, keys ``min``, ``max``,
    ``mean``, ``median`` and ``p90``/``p95``/``p99`` where printed."""

    gpu_compute_ms: dict[str, float]
    throughput_qps: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    end_to_end_ms: dict[str, float] = field(default_factory=dict)
    enqueue_ms: dict[str, float] = field(default_factory=dict)
    h2d_ms: dict[str, float] = field(default_factory=dict)
    d2h_ms: dict[str, float] = field(default_factory=dict)
    total_host_walltime_s: float | None = None
    total_gpu_compute_s: float | None = None
    tensorrt_version: str | None = None
    status: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decode_version(number: int) -> str:
    """trtexec's ``[TensorRT v100300]`` -> ``10.3.0``; ``v8401`` -> ``8.4.1`` (the encoding
    changed from major*1000 to major*10000 with TensorRT 10)."""
    if number >= 100000:
        major, rest = divmod(number, 10000)
    else:
        major, rest = divmod(number, 1000)
    return f"{major}.{rest // 100}.{rest % 100}"


def _stats(body: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, pct, value in _STAT.findall(body):
        out[f"p{pct}" if pct else key] = float(value)
    return out


def parse_trtexec_summary(text: str) -> TrtexecSummary:
    """Parse trtexec's stdout/log text.

    Raises:
        ModelError: No "GPU Compute Time" line: the run failed before timing; the message
            carries the last lines of the output, where trtexec says why.
    """
    sections: dict[str, dict[str, float]] = {}
    throughput = walltime = gpu_total = None
    version = status = None
    for raw in text.splitlines():
        line = raw.strip()
        match = _LINE.match(line)
        if match and match.group("name") in _SECTIONS:
            sections[_SECTIONS[match.group("name")]] = _stats(match.group("body"))
            continue
        if m := _THROUGHPUT.search(line):
            throughput = float(m.group(1))
        elif m := _TOTAL.search(line):
            if m.group(1) == "Host Walltime":
                walltime = float(m.group(2))
            else:
                gpu_total = float(m.group(2))
        elif m := _STATUS.search(line):
            status = m.group(1) if m.group(1) != "RUNNING" else status
            version = version or decode_version(int(m.group(2)))
        elif m := _VERSION_LINE.search(line):
            version = ".".join(m.groups())
    compute = sections.pop("gpu_compute_ms", None)
    if not compute or "median" not in compute:
        tail = [t for t in text.strip().splitlines() if t.strip()][-8:]
        raise ModelError("trtexec printed no performance summary (no 'GPU Compute Time' line); "
                         "its last lines:\n  " + "\n  ".join(tail or ["(no output)"]))
    return TrtexecSummary(gpu_compute_ms=compute, throughput_qps=throughput,
                          total_host_walltime_s=walltime, total_gpu_compute_s=gpu_total,
                          tensorrt_version=version, status=status, **sections)


def latency_from_summary(summary: TrtexecSummary, *, warmup: int, batch_size: int = 1,
                         input_shape: Sequence[int] | None = None) -> dict[str, Any]:
    """The report's ``latency_ms`` entry from a summary (GPU compute time).

    Percentiles trtexec did not print (p90 before TensorRT 10) are ``None``, never guessed;
    ``runs`` is estimated from total GPU time / mean when both are printed.
    """
    s = summary.gpu_compute_ms
    runs = None
    if summary.total_gpu_compute_s and s.get("mean"):
        runs = int(round(summary.total_gpu_compute_s * 1000.0 / s["mean"]))
    return {"p50": s["median"], "p90": s.get("p90"), "p99": s.get("p99"), "mean": s.get("mean"),
            "stdev": None, "min": s.get("min"), "max": s.get("max"), "runs": runs,
            "warmup": warmup, "threads": 1, "batch_size": batch_size,
            "input_shape": list(input_shape) if input_shape else None,
            "seconds": summary.total_host_walltime_s, "stopped_by": "trtexec",
            "max_seconds": None, "source": "trtexec GPU Compute Time",
            "throughput_qps": summary.throughput_qps}


def compute_times_ms(export_times: str | Path | Sequence[Mapping[str, Any]]) -> list[float]:
    """Per-iteration GPU compute times from trtexec's ``--exportTimes`` JSON."""
    if isinstance(export_times, (str, Path)):
        try:
            export_times = json.loads(Path(export_times).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ModelError(f"cannot read trtexec --exportTimes file {export_times}: "
                             f"{err}") from None
    times = [float(row["computeMs"]) for row in export_times  # type: ignore[union-attr]
             if isinstance(row, Mapping) and "computeMs" in row]
    if not times or not all(math.isfinite(t) for t in times):
        raise ModelError("trtexec --exportTimes holds no finite 'computeMs' values")
    return times


def trtexec_command(*, onnx: str | None = None, load_engine: str | None = None,
                    save_engine: str | None = None, precision: str = "fp32",
                    tensorrt_major: int = 10, dla_core: int | None = None,
                    gpu_fallback: bool = True, warmup_ms: int = 200, iterations: int = 200,
                    shapes: Mapping[str, Sequence[int]] | None = None,
                    export_times: str | None = None, workspace_mb: int | None = None,
                    trtexec: str = DEFAULT_TRTEXEC, build_only: bool = False) -> list[str]:
    """The argument list of one trtexec run (quote it with ``shlex.join`` for a shell).

    Args:
        onnx / load_engine: Build from this ONNX, or load this serialized engine (one of them).
        save_engine: Where to write the built engine.
        precision: ``fp32``, ``fp16`` or ``int8``. TensorRT 10: ``int8`` sets ``--int8
            --fp16`` (Q/DQ layers in INT8, the rest may use FP16); TensorRT >= 11: no flags,
            the network is strongly typed and INT8 comes from Q/DQ only.
        tensorrt_major: TensorRT major version on the device.
        dla_core: Run on this DLA core (Orin: 0 or 1), layers DLA lacks fall back to the GPU
            when ``gpu_fallback``.
        warmup_ms / iterations: trtexec's ``--warmUp`` (milliseconds) and ``--iterations``
            (with ``--duration=0`` it runs exactly that many, at least).
        shapes: Input name -> shape for dynamic inputs (``--shapes``).
        export_times: Write per-iteration times (JSON) here.
        build_only: Build (and save) without timing (``--skipInference``).

    Raises:
        ConfigError: Contradictory or unsupported options.
    """
    if (onnx is None) == (load_engine is None):
        raise ConfigError("trtexec needs exactly one of onnx / load_engine")
    if precision not in ("fp32", "fp16", "int8"):
        raise ConfigError(f"trtexec: unsupported precision {precision!r}; supported: fp32, "
                          "fp16, int8")
    if tensorrt_major >= 11 and precision == "fp16":
        raise ConfigError("TensorRT >= 11 builds strongly typed networks: trtexec has no "
                          "--fp16; give it an FP16 ONNX model, or use runner 'edgecompress' "
                          "(its TensorRT backend converts the model)")
    if iterations < 1 or warmup_ms < 0:
        raise ConfigError(f"trtexec: iterations must be >= 1 and warmup_ms >= 0, got "
                          f"{iterations} and {warmup_ms}")
    if dla_core is not None and (isinstance(dla_core, bool) or dla_core < 0):
        raise ConfigError(f"trtexec: dla_core must be a core index >= 0, got {dla_core!r}")
    args = [trtexec]
    args.append(f"--onnx={onnx}" if onnx is not None else f"--loadEngine={load_engine}")
    if save_engine:
        args.append(f"--saveEngine={save_engine}")
    if onnx is not None:
        if tensorrt_major < 11 and precision == "int8":
            args += ["--int8", "--fp16"]
        elif tensorrt_major < 11 and precision == "fp16":
            args.append("--fp16")
        if workspace_mb:
            args.append(f"--memPoolSize=workspace:{int(workspace_mb)}M")
    if dla_core is not None:
        args.append(f"--useDLACore={int(dla_core)}")
        if gpu_fallback:
            args.append("--allowGPUFallback")
    for name, shape in (shapes or {}).items():
        args.append(f"--shapes={name}:{'x'.join(str(int(d)) for d in shape)}")
    if build_only:
        args.append("--skipInference")
    else:
        args += [f"--warmUp={int(warmup_ms)}", f"--iterations={int(iterations)}",
                 "--duration=0", "--avgRuns=1"]
        if export_times:
            args.append(f"--exportTimes={export_times}")
    return args
