"""bench stage: per target, build the student's and the teacher's engines with the target's backend
and measure accuracy, parity (incl. SNR) and latency for both on this machine, in the same run.

Timing the teacher next to the student on the same machine and runtime is what makes the speedup
number honest; absolute milliseconds from another day or machine are not comparable.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edgecompress.io import atomic_write_json
from edgecompress.recipe import TargetConfig, recipe_to_dict
from edgecompress.stages.base import Context, Stage, StageResult
from edgecompress.stages.common import final_student_source, load_final_student
from edgecompress.training import predict_logits

logger = logging.getLogger(__name__)


class BenchStage(Stage):
    """Produces ``engines/<target>/...`` and ``bench/results.json``."""

    name = "bench"

    def config(self, ctx: Context) -> dict[str, Any]:
        return {"targets": recipe_to_dict(ctx.recipe)["targets"]}

    def inputs(self, ctx: Context) -> dict[str, Any]:
        from edgecompress.stages.qat import preset_artifact, preset_reference, required_presets

        files = {"student_onnx": ctx.run_dir / "export" / "student.onnx",
                 "teacher_onnx": ctx.run_dir / "export" / "teacher.onnx",
                 "student": final_student_source(ctx)}
        from edgecompress.stages.export import float_suffixes

        for suffix in float_suffixes(ctx) - {".onnx"}:
            for role in ("student", "teacher"):
                files[f"{role}{suffix}"] = ctx.run_dir / "export" / f"{role}{suffix}"
        if ctx.recipe.stages.qat.enabled:
            for preset in required_presets(ctx.recipe):
                files[f"{preset}_int8"] = preset_artifact(ctx.run_dir, preset)
                files[f"{preset}_reference"] = preset_reference(ctx.run_dir, preset)
        return files

    def run(self, ctx: Context) -> StageResult:
        bundle = ctx.bundle
        student = load_final_student(ctx)
        reference = predict_logits(student, bundle.test.x, ctx.dist.device)
        results, outputs = [], {}
        for target in ctx.recipe.targets:
            entry = bench_target(ctx, target, reference)
            results.append(entry)
            for key in ("artifact", "teacher_artifact"):
                if entry.get(key):
                    outputs[f"{target.name}:{key}"] = ctx.run_dir / entry[key]
        from edgecompress.report import environment

        path = ctx.stage_dir(self.name) / "results.json"
        atomic_write_json(path, {"environment": environment(), "targets": results})
        outputs["results"] = path
        return StageResult(outputs=outputs, metrics={
            t["name"]: t["status"] for t in results})


def bench_target(ctx: Context, target: TargetConfig, reference_logits) -> dict[str, Any]:
    """Build, run and time one target for the student and the teacher; never raises for a
    missing runtime (the entry says ``skipped`` and why)."""
    from edgecompress.backends import get_backend
    from edgecompress.bench import benchmark_runner, parity_summary

    backend = get_backend(target.backend)
    backend.validate(target.precision, target.threads)
    entry: dict[str, Any] = {"name": target.name, "backend": target.backend,
                             "precision": target.precision, "threads": target.threads}
    if target.note:
        entry["note"] = target.note
    from edgecompress.remote.bench import remote_target_for

    remote = remote_target_for(target, backend)  # its profile's device is reached over ssh
    ok, reason = backend.availability() if remote is None else remote.availability()
    if ok and target.profile and remote is None:
        # A target made from a device profile must run on that device: timing an AVX-512
        # profile on an AVX2 machine, or a phone profile here, would report the wrong numbers.
        from edgecompress.targets import load_profile, machine_reasons

        mismatch = machine_reasons(load_profile(target.profile))
        ok, reason = not mismatch, "; ".join(mismatch)
    if not ok:
        logger.warning("%s: skipped: %s", target.name, reason)
        return {**entry, "status": "skipped", "reason": reason}
    bundle = ctx.bundle
    engine_dir = ctx.run_dir / "engines" / target.name
    export_dir = ctx.run_dir / "export"
    source, reference_logits, preset = student_source(ctx, target, reference_logits)
    if not source.is_file():
        reason = f"no {preset} int8 model was produced ({source.name} missing: see the qat stage)"
        logger.warning("%s: skipped: %s", target.name, reason)
        return {**entry, "status": "skipped", "reason": reason}
    adb_profile = _adb_profile(target)
    builder = remote or backend  # remote: built here, or staged for a build on the device
    student_art = builder.build(source, engine_dir, precision=target.precision)
    suffix = backend.capabilities.artifact_suffixes[0]  # .onnx, or .tflite for TFLite
    teacher_art = builder.build(export_dir / f"teacher{suffix}", engine_dir / "teacher",
                                precision="fp32")
    measured = {}
    for role, artifact in (("teacher", teacher_art), ("student", student_art)):
        if adb_profile is not None:  # a phone: benchmark_model times it there (no outputs)
            from edgecompress.bench.adb import measure_over_adb

            measured[role] = measure_over_adb(artifact, adb_profile, threads=target.threads,
                                              warmup=target.warmup, runs=target.runs)
            continue
        if remote is not None:  # measured on the device, numbers come back over ssh
            measured[role] = remote.benchmark(artifact, bundle.test.x, bundle.test.y,
                                              warmup=target.warmup, runs=target.runs,
                                              batch_size=target.batch_size,
                                              max_seconds=target.max_seconds,
                                              min_runs=target.min_runs)
            continue
        runner = backend.load(artifact, threads=target.threads)
        try:
            measured[role] = benchmark_runner(runner, bundle.test.x, bundle.test.y,
                                              warmup=target.warmup, runs=target.runs,
                                              batch_size=target.batch_size,
                                              max_seconds=target.max_seconds,
                                              min_runs=target.min_runs)
        finally:
            runner.close()
        logger.info("%s %s: accuracy %.4f, p50 %.4f ms", target.name, role,
                    measured[role]["accuracy"], measured[role]["latency_ms"]["p50"])
    s_lat, t_lat = measured["student"]["latency_ms"], measured["teacher"]["latency_ms"]
    if preset:
        entry["quant_preset"] = preset
    return {
        **entry, "status": "ok", "reason": "", **backend.inspect(student_art,
                                                                  precision=target.precision),
        "artifact": _rel(ctx, student_art), "size_bytes": Path(student_art).stat().st_size,
        "teacher_artifact": _rel(ctx, teacher_art),
        "teacher_size_bytes": Path(teacher_art).stat().st_size,
        "accuracy": measured["student"]["accuracy"],
        "teacher_accuracy": measured["teacher"]["accuracy"],
        "latency_ms": s_lat, "teacher_latency_ms": t_lat,
        "speedup_vs_teacher": _speedup(t_lat, s_lat),
        "parity": parity_summary(reference_logits, measured["student"]["logits"])
        if measured["student"]["logits"] is not None else None,  # None: trtexec only times
        **({"remote": measured["student"]["remote"]} if remote is not None else {}),
        **({"remote": measured["student"]["remote"]} if adb_profile is not None else {}),
        # Raw per-call latencies: kept in bench/results.json (plots, re-analysis), not in
        # report.json where they would dominate the size.
        "samples_ms": {role: measured[role]["samples_ms"] for role in ("student", "teacher")},
    }


def student_source(ctx: Context, target: TargetConfig,
                   fp32_reference) -> tuple[Path, Any, str | None]:
    """The file the target's student engine is built from, the logits its outputs are compared
    with, and the INT8 preset (None for float targets).

    Float targets start from the exported FP32 ONNX and are compared with the float student; int8
    targets start from their preset's quantized model and are compared with the PyTorch int8
    model (comparing with the float student would blame the engine for quantization error).
    """
    if target.precision != "int8":
        from edgecompress.backends import get_backend

        suffix = get_backend(target.backend).capabilities.artifact_suffixes[0]
        return ctx.run_dir / "export" / f"student{suffix}", fp32_reference, None
    import numpy as np

    from edgecompress.quant.presets import preset_for_target
    from edgecompress.stages.qat import preset_artifact, preset_reference

    preset = preset_for_target(target.backend, target.quant_preset)
    ref_path = preset_reference(ctx.run_dir, preset)
    reference = np.load(ref_path) if ref_path.is_file() else fp32_reference
    return preset_artifact(ctx.run_dir, preset), reference, preset


def _speedup(teacher: dict[str, Any], student: dict[str, Any]) -> float | None:
    """Teacher p50 / student p50 (means where the tool reports no median: benchmark_model)."""
    key = "p50" if teacher.get("p50") and student.get("p50") else "mean"
    t, s = teacher.get(key), student.get(key)
    return t / s if t and s else None


def _adb_profile(target: TargetConfig) -> Any:
    """The target's profile when its device is a phone reached over adb, else None."""
    if not target.profile:
        return None
    from edgecompress.targets import load_profile

    profile = load_profile(target.profile)
    return profile if profile.connection.kind == "adb" else None


def _rel(ctx: Context, path: str | Path) -> str:
    return str(Path(path).resolve().relative_to(ctx.run_dir.resolve()))
