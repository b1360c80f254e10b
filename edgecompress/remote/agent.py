"""The device side of a remote benchmark: ``python -m edgecompress.remote.agent REQUEST.json``.

The workstation copies the artifact, the exact test inputs (``inputs.npz``: ``x``, or
``x:<name>`` per input of a multi-input model, and, for accuracy, ``y``) and a request into a
job directory on the board, runs this module there, and fetches ``result.json`` (+
``logits.npy`` and a built engine). Measuring with the same
:func:`edgecompress.bench.benchmark_runner` as a local run keeps the numbers comparable, and the
logits let the workstation compute parity against the PyTorch model it still holds.

A request with ``engines`` (several artifacts, e.g. the student and the teacher) times them all
in the same interleaved rounds (:func:`~edgecompress.bench.benchmark_runners`), so their ratios
are taken round by round on the board as they are locally; the speedups come back computed.

``--probe BACKEND`` only reports whether the backend is usable on the device. Both modes print
one JSON document on stdout; errors become ``{"ok": false, "error": {...}}`` so the workstation
can re-raise them with their exit code instead of parsing a traceback.
"""

from __future__ import annotations

import json
import logging
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any

RESULT_NAME = "result.json"
LOGITS_NAME = "logits.npy"


def device_info() -> dict[str, Any]:
    """Where the numbers were measured (goes into the report's ``remote`` entry)."""
    from edgecompress import __version__

    return {"hostname": socket.gethostname(), "machine": platform.machine(),
            "system": platform.platform(), "python": platform.python_version(),
            "edgecompress": __version__}


def probe(backend_name: str) -> dict[str, Any]:
    """``{"ok", "reason", "device"}`` for ``backend_name`` on this machine."""
    from edgecompress.backends import get_backend

    ok, reason = get_backend(backend_name).availability()
    return {"ok": ok, "reason": reason, "device": device_info()}


def bench(request: dict[str, Any], job_dir: Path) -> dict[str, Any]:
    """Build (if asked), load and measure the artifact the request names."""
    import numpy as np

    from edgecompress.backends import get_backend
    from edgecompress.bench import benchmark_runner
    from edgecompress.remote.jobs import read_inputs

    backend = get_backend(request["backend"])
    backend.validate(request["precision"], request["threads"])
    artifact = job_dir / request["artifact"]
    build_seconds = None
    if request.get("build"):
        t0 = time.perf_counter()
        artifact = backend.build(artifact, job_dir / "engine", precision=request["precision"],
                                 **request.get("build_options", {}))
        build_seconds = round(time.perf_counter() - t0, 3)
    x, y = read_inputs(job_dir / request["inputs"])
    runner = backend.load(artifact, threads=request["threads"])
    try:
        measured = benchmark_runner(runner, x, y, warmup=request["warmup"],
                                    runs=request["runs"], batch_size=request["batch_size"],
                                    max_seconds=request.get("max_seconds"),
                                    min_runs=request.get("min_runs"))
        events = list(getattr(runner, "event_times_ms", None) or [])
    finally:
        runner.close()
    latency = measured["latency_ms"]
    if events:  # TensorRT: GPU time from CUDA events; the wall-clock numbers stay alongside
        from edgecompress.bench.latency import LatencyStats

        timed = events[-len(measured["samples_ms"]):]
        stats = LatencyStats.from_samples(timed, warmup=latency["warmup"],
                                          threads=latency["threads"],
                                          batch_size=latency["batch_size"],
                                          input_shape=latency["input_shape"])
        latency = {**stats.to_dict(), "source": "CUDA events", "wall_latency_ms": latency}
        measured["samples_ms"] = stats.samples_ms
    np.save(job_dir / LOGITS_NAME, np.asarray(measured["logits"], dtype=np.float32))
    return {"ok": True, "accuracy": measured["accuracy"], "latency_ms": latency,
            "samples_ms": measured["samples_ms"],
            "artifact": str(Path(artifact).resolve().relative_to(job_dir.resolve())),
            "build_seconds": build_seconds, "device": device_info()}


def bench_many(request: dict[str, Any], job_dir: Path) -> dict[str, Any]:
    """Build (if asked), load and time every engine of ``request["engines"]`` in interleaved
    rounds; logits go to ``logits-<name>.npy``. The speed fields compare ``student`` with
    ``teacher`` (same-round ratios) when both are present."""
    import numpy as np

    from edgecompress.backends import get_backend
    from edgecompress.bench import benchmark_runners
    from edgecompress.bench.speed import speed_fields
    from edgecompress.remote.jobs import read_inputs

    backend = get_backend(request["backend"])
    backend.validate(request["precision"], request["threads"])
    engines: dict[str, dict[str, Any]] = {}
    runners: dict[str, Any] = {}
    x, y = read_inputs(job_dir / request["inputs"])
    try:
        for spec in request["engines"]:
            artifact, build_seconds = job_dir / spec["artifact"], None
            if spec.get("build"):
                t0 = time.perf_counter()
                artifact = backend.build(artifact, job_dir / f"engine-{spec['name']}",
                                         precision=spec["precision"],
                                         **spec.get("build_options", {}))
                build_seconds = round(time.perf_counter() - t0, 3)
            engines[spec["name"]] = {
                "artifact": str(Path(artifact).resolve().relative_to(job_dir.resolve())),
                "build_seconds": build_seconds}
            runners[spec["name"]] = backend.load(artifact, threads=request["threads"])
        measured, result = benchmark_runners(
            runners, x, y, warmup=request["warmup"], runs=request["runs"],
            batch_size=request["batch_size"], max_seconds=request.get("max_seconds"),
            min_runs=request.get("min_runs"))
    finally:
        for runner in runners.values():
            runner.close()
    for name, m in measured.items():
        np.save(job_dir / f"logits-{name}.npy", np.asarray(m["logits"], dtype=np.float32))
        engines[name].update(accuracy=m["accuracy"], latency_ms=m["latency_ms"],
                             samples_ms=m["samples_ms"])
    speed = (speed_fields(result, student="student", teacher="teacher")
             if {"student", "teacher"} <= set(measured) else {"timing": result.schedule()})
    return {"ok": True, "engines": engines, "speed": speed, "device": device_info()}


def _error(err: BaseException) -> dict[str, Any]:
    from edgecompress.errors import EdgeCompressError

    code = err.exit_code if isinstance(err, EdgeCompressError) else 4
    return {"ok": False, "error": {"type": type(err).__name__, "message": str(err),
                                   "exit_code": code}}


def main(argv: list[str] | None = None) -> int:
    """Entry point; prints exactly one JSON document on stdout, logs go to stderr."""
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        if len(args) == 2 and args[0] == "--probe":
            result = probe(args[1])
        elif len(args) == 1:
            request_path = Path(args[0]).resolve()
            request = json.loads(request_path.read_text(encoding="utf-8"))
            run = bench_many if "engines" in request else bench
            result = run(request, request_path.parent)
            (request_path.parent / RESULT_NAME).write_text(json.dumps(result), encoding="utf-8")
        else:
            result = _error(ValueError("usage: python -m edgecompress.remote.agent "
                                       "REQUEST.json | --probe BACKEND"))
    except Exception as err:  # noqa: BLE001 - reported to the workstation, which re-raises it
        result = _error(err)
    print(json.dumps(result))
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
