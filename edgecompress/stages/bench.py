"""bench stage: per target, build the student's and the teacher's engines with the target's backend
and measure accuracy, parity (incl. SNR) and latency for both on this machine, in the same run.

Written once for every model family: the family says which files each target's engines are
built from and what they are compared with (:class:`EngineSources`, ``engine_sources``), and
what the engines are fed (an :class:`~edgecompress.bench.evalset.EvalSet`: image arrays, or
token ids and masks); building, timing, parity and the report entry are the same for all.

Timing the teacher next to the student on the same machine and runtime is what makes the speedup
number honest; absolute milliseconds from another day or machine are not comparable. Timing them
one block after another is not enough on a shared machine (the neighbours' load changes between
blocks), so every local engine of a run (teacher, FP32 student, each INT8 engine, per target) is
timed in interleaved rounds and every ratio is the median of same-round ratios
(:mod:`edgecompress.bench.speed`). An int8 target is also timed against its FP32 twin (the same
student, FP32, on the same runtime). Remote targets (ssh, adb) are timed on their device, one
engine after the other.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecompress.io import atomic_write_json
from edgecompress.stages.base import Context, Stage, StageResult

logger = logging.getLogger(__name__)


@dataclass
class ExtraEngine:
    """One more engine of a target, timed in the same rounds as its student (the text family's
    teacher through ``quantize_dynamic``): reported under ``targets[].<role>``."""

    source: Path
    precision: str
    label: str


@dataclass
class EngineSources:
    """What a model family hands the bench stage for one target.

    Attributes:
        student: The file the student's engine is built from (FP32 export, or the INT8 model).
        teacher: The file the teacher's (FP32) engine is built from.
        reference: Logits on the test split the student engine is compared with (the PyTorch
            int8 model for int8 targets, the float student otherwise).
        fp32: For int8 targets: the FP32 twin's source (same student, FP32, same runtime).
        entry: Fields the family adds to the report entry (``quant_preset``, ``seq_len``).
        extra: More engines timed in the same rounds, by role.
        build_options: Passed to every engine build of the target (a text model's TensorRT
            engines are built for its ``sequence_length``).
    """

    student: Path
    teacher: Path
    reference: Any
    fp32: Path | None = None
    entry: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, ExtraEngine] = field(default_factory=dict)
    build_options: dict[str, Any] = field(default_factory=dict)


class BenchStage(Stage):
    """Produces ``engines/<target>/...`` and ``bench/results.json``."""

    name = "bench"

    def config(self, ctx: Context) -> dict[str, Any]:
        return {"targets": ctx.family.recipe_to_dict(ctx.recipe)["targets"]}

    def inputs(self, ctx: Context) -> dict[str, Any]:
        return ctx.family.bench_inputs(ctx)

    def run(self, ctx: Context) -> StageResult:
        reference, macs = ctx.family.bench_reference(ctx)
        results: list[dict[str, Any] | None] = [None] * len(ctx.recipe.targets)
        local: list[tuple[int, LocalPlan]] = []
        for i, target in enumerate(ctx.recipe.targets):
            prepared = prepare_target(ctx, target, reference)
            if isinstance(prepared, LocalPlan):
                local.append((i, prepared))
            else:
                results[i] = prepared
        # Local engines with the same input and timing settings share one interleaved
        # benchmark, so every ratio of the run (vs teacher, int8 vs FP32) comes from
        # same-round pairs.
        groups: dict[tuple, list[tuple[int, LocalPlan]]] = {}
        for i, plan in local:
            groups.setdefault(plan.timing_key(), []).append((i, plan))
        for group in groups.values():
            entries = measure_local(ctx, [plan for _, plan in group], macs)
            for (i, _), entry in zip(group, entries, strict=True):
                results[i] = entry
        outputs = {}
        for entry in results:
            for key in ("artifact", "teacher_artifact", "fp32_artifact"):
                if entry.get(key):
                    outputs[f"{entry['name']}:{key}"] = ctx.run_dir / entry[key]
        from edgecompress.report import environment

        path = ctx.stage_dir(self.name) / "results.json"
        atomic_write_json(path, {"environment": environment(), "targets": results})
        outputs["results"] = path
        return StageResult(outputs=outputs, metrics={
            t["name"]: t["status"] for t in results})


@dataclass
class LocalPlan:
    """A target whose engines are built and run on this machine, waiting to be timed.

    Attributes:
        target: Its config.
        backend: Its backend.
        entry: The report entry so far (name, backend, precision, ...).
        engines: Role (``student``, ``teacher``, ``fp32`` for an int8 target's FP32 twin, and
            the family's extra roles) -> built artifact.
        reference: Logits the student engine is compared with.
        data: What its engines are fed.
        extra: The family's extra engines, by role.
    """

    target: Any
    backend: Any
    entry: dict[str, Any]
    engines: dict[str, Path]
    reference: Any
    data: Any
    extra: dict[str, ExtraEngine] = field(default_factory=dict)

    def timing_key(self) -> tuple:
        t = self.target
        return (self.data.signature, t.warmup, t.runs, t.batch_size, t.max_seconds,
                t.min_runs if t.max_seconds is not None else None)


def _skipped(entry: dict[str, Any], reason: str) -> dict[str, Any]:
    logger.warning("%s: skipped: %s", entry["name"], reason)
    return {**entry, "status": "skipped", "reason": reason}


def prepare_target(ctx: Context, target: Any, reference_logits: Any
                   ) -> dict[str, Any] | LocalPlan:
    """Check and build one target: a finished entry (skipped, or measured on a remote device,
    which keeps its own per-engine path), or the :class:`LocalPlan` of a local target."""
    from edgecompress.backends import get_backend

    backend = get_backend(target.backend)
    backend.validate(target.precision, target.threads)
    entry: dict[str, Any] = {"name": target.name, "backend": target.backend,
                             "precision": target.precision, "threads": target.threads}
    if getattr(target, "note", ""):
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
        return _skipped(entry, reason)
    sources = ctx.family.engine_sources(ctx, target, reference_logits)
    if isinstance(sources, str):  # why the family has nothing to build for this target
        return _skipped(entry, sources)
    entry.update(sources.entry)
    missing = [p for p in (sources.student, sources.teacher, sources.fp32) if p is not None
               and not p.is_file()]
    if missing:
        return _skipped(entry, f"{missing[0].name} was not produced (see the log of the stage "
                               "that writes it)")
    engine_dir = ctx.run_dir / "engines" / target.name
    adb_profile = _adb_profile(target)
    builder = remote or backend  # remote: built here, or staged for a build on the device
    shared = dict(sources.build_options)
    options: dict[str, Any] = dict(shared)
    if target.backend == "tflite" and target.precision == "int8":
        # Float islands the converter left (the qat stage logged them) are reported in the
        # engine's fp32_nodes; gate.no_fp32_fallback decides whether they may ship.
        options["allow_float_ops"] = True
    student_art = builder.build(sources.student, engine_dir, precision=target.precision,
                                **options)
    teacher_art = builder.build(sources.teacher, engine_dir / "teacher", precision="fp32",
                                **shared)
    data = ctx.family.eval_set(ctx, target)
    if remote is None and adb_profile is None:
        engines = {"student": Path(student_art), "teacher": Path(teacher_art)}
        if target.precision == "int8" and sources.fp32 is not None:
            engines["fp32"] = Path(backend.build(sources.fp32, engine_dir / "student_fp32",
                                                 precision="fp32", **shared))
        for role, extra in sources.extra.items():
            engines[role] = Path(backend.build(extra.source, engine_dir / role,
                                               precision=extra.precision, **shared))
        return LocalPlan(target, backend, entry, engines, sources.reference, data,
                         sources.extra)
    return _remote_entry(ctx, target, backend, entry, remote, adb_profile, student_art,
                         teacher_art, sources.reference, data)


def _remote_entry(ctx: Context, target: Any, backend: Any, entry: dict[str, Any],
                  remote: Any, adb_profile: Any, student_art: Path, teacher_art: Path,
                  reference_logits: Any, data: Any) -> dict[str, Any]:
    """Time a target on its device: over ssh the agent times teacher and student in the same
    interleaved rounds (same-round speedups, as locally); adb's benchmark_model and trtexec
    time one engine per call, so those run one after the other (``timing.scheme``)."""
    from edgecompress.bench import parity_summary

    measured: dict[str, Any] = {}
    speed = {"timing": {"scheme": "sequential", "where": "remote device"}}
    x, y = data.sample()  # sent to the device: bounded
    if reference_logits is not None:  # the device scores the sample: compare its rows
        from edgecompress.bench.evalset import feed_rows

        reference_logits = reference_logits[:feed_rows(x)]
    if adb_profile is None and remote.interleaves:  # the agent: same rounds as a local run
        measured, speed = remote.benchmark_many(
            {"teacher": teacher_art, "student": student_art}, x, y, warmup=target.warmup,
            runs=target.runs, batch_size=target.batch_size, max_seconds=target.max_seconds,
            min_runs=target.min_runs)
        speed = {**speed, "timing": {**speed.get("timing", {}), "where": "remote device"}}
    for role, artifact in (("teacher", teacher_art), ("student", student_art)):
        if role in measured:
            continue
        if adb_profile is not None:  # a phone: benchmark_model times it there (no outputs)
            from edgecompress.bench.adb import measure_over_adb

            measured[role] = measure_over_adb(artifact, adb_profile, threads=target.threads,
                                              warmup=target.warmup, runs=target.runs,
                                              value_ranges=data.value_ranges())
            continue
        measured[role] = remote.benchmark(artifact, x, y,
                                          warmup=target.warmup, runs=target.runs,
                                          batch_size=target.batch_size,
                                          max_seconds=target.max_seconds,
                                          min_runs=target.min_runs)
    s_lat, t_lat = measured["student"]["latency_ms"], measured["teacher"]["latency_ms"]
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
        **speed,
        "parity": parity_summary(reference_logits, measured["student"]["logits"])
        if measured["student"]["logits"] is not None else None,  # None: trtexec only times
        "remote": measured["student"]["remote"],
        # Raw per-call latencies: kept in bench/results.json (plots, re-analysis), not in
        # report.json where they would dominate the size.
        "samples_ms": {role: measured[role]["samples_ms"] for role in ("student", "teacher")},
    }


def _engine_key(backend: Any, artifact: Path, threads: int) -> tuple[str, int, str]:
    """Two targets' engines are the same engine when backend, threads and bytes (the artifact
    and the engine.json that decides how ONNX Runtime opens it) are the same."""
    digest = hashlib.sha256(Path(artifact).read_bytes())
    info = Path(artifact).parent / "engine.json"
    if info.is_file():
        digest.update(info.read_bytes())
    return backend.name, threads, digest.hexdigest()


def measure_local(ctx: Context, plans: list[LocalPlan], macs: Any) -> list[dict[str, Any]]:
    """Time every engine of ``plans`` (same input and timing settings) in one interleaved
    benchmark and return their report entries, in order. ``macs(target)``: the student's MACs
    per sample at the target's input (None where they cannot be counted)."""
    from edgecompress.bench import benchmark_runners, parity_summary
    from edgecompress.bench.speed import speed_fields, throughput_fields

    labels: dict[tuple, str] = {}  # engine key -> its name in the benchmark
    roles: list[dict[str, str]] = []  # per plan: role -> engine name
    sources: dict[str, tuple[Any, Path, int]] = {}
    for plan in plans:
        mine = {}
        for role, artifact in plan.engines.items():
            key = _engine_key(plan.backend, artifact, plan.target.threads)
            if key not in labels:
                labels[key] = f"{plan.target.name}/{role}"
                sources[labels[key]] = (plan.backend, artifact, plan.target.threads)
            mine[role] = labels[key]
        roles.append(mine)
    t = plans[0].target
    runners = {}
    try:
        for name, (backend, artifact, threads) in sources.items():
            runners[name] = backend.load(artifact, threads=threads)
        measured, result = benchmark_runners(
            runners, plans[0].data, warmup=t.warmup, runs=t.runs, batch_size=t.batch_size,
            max_seconds=t.max_seconds, min_runs=t.min_runs)
    finally:
        for runner in runners.values():
            runner.close()
    entries = []
    for plan, mine in zip(plans, roles, strict=True):
        target, art = plan.target, plan.engines
        student, teacher = measured[mine["student"]], measured[mine["teacher"]]
        entry = {
            **plan.entry, "status": "ok", "reason": "",
            **plan.backend.inspect(art["student"], precision=target.precision),
            "artifact": _rel(ctx, art["student"]), "size_bytes": art["student"].stat().st_size,
            "teacher_artifact": _rel(ctx, art["teacher"]),
            "teacher_size_bytes": art["teacher"].stat().st_size,
            "accuracy": student["accuracy"], "teacher_accuracy": teacher["accuracy"],
            "latency_ms": student["latency_ms"], "teacher_latency_ms": teacher["latency_ms"],
            **speed_fields(result, student=mine["student"], teacher=mine["teacher"],
                           fp32_twin=mine.get("fp32")),
            "parity": parity_summary(plan.reference, student["logits"]),
            **throughput_fields(macs(target), student["latency_ms"]["p50"],
                                batch_size=target.batch_size, threads=target.threads,
                                precision=target.precision),
            "samples_ms": {"student": student["samples_ms"], "teacher": teacher["samples_ms"]},
        }
        if "fp32" in mine:
            twin = measured[mine["fp32"]]
            entry.update(fp32_artifact=_rel(ctx, art["fp32"]),
                         fp32_size_bytes=art["fp32"].stat().st_size,
                         fp32_accuracy=twin["accuracy"])
            entry["samples_ms"]["fp32"] = twin["samples_ms"]
        for role, extra in plan.extra.items():
            entry[role] = _extra_entry(ctx, role, extra, art[role], measured[mine[role]],
                                       result, mine)
            entry["samples_ms"][role] = measured[mine[role]]["samples_ms"]
        for note in entry.get("notes") or []:
            logger.warning("%s: %s", target.name, note)
        logger.info("%s: accuracy %s, p50 %.4f ms, %.2fx vs teacher%s%s", target.name,
                    "-" if entry["accuracy"] is None else f"{entry['accuracy']:.4f}",
                    entry["latency_ms"]["p50"], entry["speedup_vs_teacher"] or 0.0,
                    " (noisy)" if entry.get("speedup_noisy") else "",
                    f", int8 {entry['int8_speedup_vs_fp32']:.2f}x vs FP32"
                    if entry.get("int8_speedup_vs_fp32") else "")
        entries.append(entry)
    return entries


def _extra_entry(ctx: Context, role: str, extra: ExtraEngine, artifact: Path,
                 measured: dict[str, Any], result: Any, names: dict[str, str]
                 ) -> dict[str, Any]:
    """``targets[].<role>``: an extra engine timed in the same rounds as the student;
    ``speedup_vs_<role>`` = its p50 / the student's (median of same-round ratios; ``_cpu``: the
    same on CPU time, which a busy machine cannot move)."""
    pair = result.paired_ratio(names[role], names["student"])
    cpu = result.paired_ratio(names[role], names["student"], cpu=True)
    return {"name": extra.label, "artifact": _rel(ctx, artifact),
            "size_bytes": artifact.stat().st_size, "accuracy": measured["accuracy"],
            "latency_ms": measured["latency_ms"],
            f"speedup_vs_{role}": pair["ratio"] if pair else None,
            "speedup_noisy": bool(pair and pair["noisy"]),
            "speedup_spread": pair["spread"] if pair else None,
            f"speedup_vs_{role}_cpu": cpu["ratio"] if cpu else None}


def _speedup(teacher: dict[str, Any], student: dict[str, Any]) -> float | None:
    """Teacher p50 / student p50 (means where the tool reports no median: benchmark_model)."""
    key = "p50" if teacher.get("p50") and student.get("p50") else "mean"
    t, s = teacher.get(key), student.get(key)
    return t / s if t and s else None


def _adb_profile(target: Any) -> Any:
    """The target's profile when its device is a phone reached over adb, else None."""
    if not target.profile:
        return None
    from edgecompress.targets import load_profile

    profile = load_profile(target.profile)
    return profile if profile.connection.kind == "adb" else None


def _rel(ctx: Context, path: str | Path) -> str:
    return str(Path(path).resolve().relative_to(ctx.run_dir.resolve()))
