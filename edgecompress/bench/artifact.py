"""``edgecompress bench``: measure one engine file on one target profile, outside any pipeline.

It writes the same report format as a pipeline run so ``gate``, ``compare`` and the HTML report
work on it unchanged; what a lone artifact cannot know (the teacher, the PyTorch reference) is
``null``. Everything is checked before the output directory is touched: bad input leaves nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import (
    BackendUnavailable,
    ConfigError,
    DataError,
    ModelError,
    RunDirError,
)
from edgecompress.targets import TargetProfile, profile_availability

logger = logging.getLogger(__name__)

REPORT_FILES = ("report.json", "report.md", "report.html", "junit.xml", "bench/results.json")


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise RunDirError(f"--out {out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / "report.json").is_file():
            raise RunDirError(f"--out {out_dir}: directory is not empty and holds no report; "
                              "choose an empty or new directory")
        if not overwrite:
            raise RunDirError(f"--out {out_dir}: already holds a report; pass --overwrite to "
                              "replace it")


def _load_data(data: str, seed: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """``(bundle, x_test, y_test)`` for ``digits`` or an ``.npz`` path (same split as a recipe
    with default fractions and this seed)."""
    from edgecompress.data import load_dataset

    if data == "digits":
        bundle = load_dataset("digits", None, seed=seed)
    else:
        path = Path(data)
        if path.suffix != ".npz":
            raise ConfigError(f"--data {data}: expected 'digits' or a .npz file")
        bundle = load_dataset("npz", path, seed=seed)
    return bundle, bundle.test.x, bundle.test.y


def _check_classes(runner: Any, batch: np.ndarray, bundle: Any, artifact: Path,
                   data: str) -> None:
    """A model with K outputs scored on data with another number of classes gives a meaningless
    accuracy (labels are re-indexed 0..K-1): refuse it before measuring."""
    out = np.asarray(runner.run(batch))
    outputs = int(np.prod(out.shape[1:])) if out.ndim > 1 else 1
    if outputs != bundle.num_classes:
        raise DataError(f"{artifact} outputs {outputs} classes but --data {data} has "
                        f"{bundle.num_classes} classes ({', '.join(bundle.class_names[:20])}); "
                        f"benchmark it on data with the classes it was trained on")


def _synthetic_input(runner: Any, profile: TargetProfile, artifact: Path) -> np.ndarray:
    """Random inputs of the profile's shape, else of the model's (dynamic batch = batch_size)."""
    if profile.input_shape is not None:
        shape = list(profile.input_shape)
    else:
        declared = getattr(getattr(runner, "session", None), "get_inputs", lambda: [])()
        dims = list(declared[0].shape) if declared else []
        if not dims or any(not isinstance(d, int) for d in dims[1:]):
            raise ConfigError(f"{artifact}: input shape {dims or '?'} is not fully known; set "
                              f"input_shape in the target profile or pass --data")
        shape = [profile.batch_size, *dims[1:]]
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def bench_artifact(artifact: Path, profile: TargetProfile, out_dir: Path, *,
                   data: str | None = None, seed: int = 0, overwrite: bool = False,
                   gate_overrides: dict[str, Any] | None = None,
                   baseline: Path | None = None) -> dict[str, Any]:
    """Measure ``artifact`` as ``profile`` says and write the report files into ``out_dir``.

    Timing uses the pipeline's scheme (:func:`~edgecompress.bench.latency.measure_interleaved`):
    warm-up, then rounds, with per-round medians, their spread and CPU time per call. With
    ``baseline`` (e.g. the FP32 teacher's engine) both engines are timed in the same interleaved
    rounds; the baseline fills the report's teacher fields and ``speedup_vs_teacher`` is the
    median of the same-round ratios.

    Returns:
        The report document (its ``gate.passed`` decides the exit code).

    Raises:
        ConfigError / DataError / ModelError / RunDirError: bad input (nothing written).
        BackendUnavailable: the profile cannot run here (the message gives every reason).
    """
    from edgecompress.backends import get_backend
    from edgecompress.bench import benchmark_runners

    artifact = Path(artifact)
    if not artifact.is_file():
        raise ConfigError(f"artifact not found: {artifact}")
    if baseline is not None and not Path(baseline).is_file():
        raise ConfigError(f"baseline artifact not found: {baseline}")
    _check_out_dir(out_dir, overwrite)
    if profile.connection.kind == "ssh":
        raise ConfigError(f"target profile {profile.name!r} is reached over ssh: measure it on "
                          "the board with edgecompress.remote.artifact.bench_artifact_remote (the "
                          "'edgecompress bench' command does), never on this machine")
    ok, reasons = profile_availability(profile)
    if not ok:
        raise BackendUnavailable(f"target profile {profile.name!r} cannot run here: "
                                 + "; ".join(reasons))
    backend = get_backend(profile.backend)
    backend.validate(profile.precision, profile.threads)
    if artifact.suffix not in backend.capabilities.artifact_suffixes:
        raise ConfigError(f"{artifact}: backend {backend.name!r} runs "
                          f"{', '.join(backend.capabilities.artifact_suffixes)} files")
    if baseline is not None and Path(baseline).suffix not in backend.capabilities.artifact_suffixes:
        raise ConfigError(f"baseline {baseline}: backend {backend.name!r} runs "
                          f"{', '.join(backend.capabilities.artifact_suffixes)} files")
    bundle, x, y = _load_data(data, seed) if data else (None, None, None)
    runner = backend.load(artifact, threads=profile.threads)
    runners = {"artifact": runner}
    try:
        if baseline is not None:
            runners["baseline"] = backend.load(Path(baseline), threads=profile.threads)
        if x is None:
            x = _synthetic_input(runner, profile, artifact)
        elif profile.input_shape is not None and list(x.shape[1:]) != profile.input_shape[1:]:
            raise ConfigError(f"--data {data}: samples of shape {list(x.shape[1:])} do not match "
                              f"the profile's input_shape {profile.input_shape}")
        try:
            if bundle is not None:
                _check_classes(runner, x[:min(profile.batch_size, len(x))], bundle, artifact, data)
            both, result = benchmark_runners(runners, x, y, warmup=profile.warmup,
                                             runs=profile.runs,
                                             batch_size=min(profile.batch_size, len(x)),
                                             max_seconds=profile.max_seconds,
                                             min_runs=profile.min_runs)
        except (ConfigError, DataError, ModelError):
            raise
        except Exception as err:  # the runtime rejected the input: a model/data mismatch
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ModelError(f"{artifact}: cannot run on inputs of shape "
                             f"{list(x.shape[1:])}: {first}") from None
    finally:
        for each in runners.values():
            each.close()
    from edgecompress.bench.speed import speed_fields

    measured = both["artifact"]
    compared = None
    if baseline is not None:
        compared = {"artifact": Path(baseline), "measured": both["baseline"],
                    "speed": speed_fields(result, student="artifact", teacher="baseline")}
    else:
        measured["timing"] = result.schedule()
    report = build_bench_report(artifact, profile, bundle, measured, gate_overrides,
                                baseline=compared)
    write_bench_outputs(report, measured["samples_ms"], out_dir,
                        baseline_samples=both["baseline"]["samples_ms"] if compared else None)
    return report


def build_bench_report(artifact: Path, profile: TargetProfile, bundle: Any,
                       measured: dict[str, Any], gate_overrides: dict[str, Any] | None,
                       baseline: dict[str, Any] | None = None) -> dict[str, Any]:
    """The schema-1 report of a single-artifact benchmark (teacher fields ``null``, or the
    ``baseline``'s: ``{"artifact", "measured", "speed"}`` when one was timed alongside)."""
    from edgecompress.gate import judge
    from edgecompress.report import SCHEMA_VERSION, environment

    budgets = profile.budgets.model_dump()
    entry = {
        "name": profile.name, "backend": profile.backend, "precision": profile.precision,
        "threads": profile.threads, "status": "ok", "reason": "",
        "artifact": str(artifact.resolve()), "size_bytes": artifact.stat().st_size,
        "teacher_artifact": None, "teacher_size_bytes": None,
        "accuracy": measured["accuracy"], "teacher_accuracy": None, "accuracy_drop": None,
        "latency_ms": measured["latency_ms"], "teacher_latency_ms": None,
        "speedup_vs_teacher": None, "parity": None,
    }
    if measured.get("timing"):
        entry["timing"] = measured["timing"]
    if baseline is not None:
        base = baseline["measured"]
        entry.update(teacher_artifact=str(baseline["artifact"].resolve()),
                     teacher_size_bytes=baseline["artifact"].stat().st_size,
                     teacher_accuracy=base["accuracy"], teacher_latency_ms=base["latency_ms"],
                     **baseline["speed"])
        if base["accuracy"] is not None and measured["accuracy"] is not None:
            from edgecompress.report import accuracy_drop_pp

            entry["accuracy_drop"] = accuracy_drop_pp(base["accuracy"], measured["accuracy"])
    dataset = ({"name": bundle.name, "eval_samples": int(len(bundle.test.y)),
                "num_classes": bundle.num_classes, "input_shape": list(bundle.input_shape)}
               if bundle is not None else
               {"name": None, "eval_samples": None, "num_classes": None,
                "input_shape": measured["latency_ms"]["input_shape"][1:]})
    return {
        "schema_version": SCHEMA_VERSION,
        "recipe": {"name": artifact.stem, "kind": "bench", "artifact": str(artifact.resolve()),
                   "profile": profile.model_dump(mode="json")},
        "environment": environment(), "dataset": dataset,
        "teacher": None, "student": None, "stages": [], "targets": [entry],
        "gate": judge([entry], budgets, None, gate_overrides),
    }


def write_bench_outputs(report: dict[str, Any], samples_ms: list[float], out_dir: Path, *,
                        baseline_samples: list[float] | None = None) -> None:
    """report.json, bench/results.json (raw samples), report.md, report.html and junit.xml."""
    from edgecompress.io import atomic_write_json, atomic_write_text
    from edgecompress.junit import write_junit
    from edgecompress.report import render_markdown, save_report
    from edgecompress.report_html import write_html_report

    name = report["targets"][0]["name"]
    samples = {name: {"student": samples_ms}}
    if baseline_samples:
        samples[name]["teacher"] = baseline_samples
    atomic_write_json(out_dir / "bench" / "results.json",
                      {"environment": report["environment"],
                       "targets": [{**report["targets"][0], "samples_ms": samples[name]}]})
    atomic_write_text(out_dir / "report.md", render_markdown(report))
    write_html_report(report, out_dir / "report.html", samples)
    write_junit(report["gate"], out_dir / "junit.xml")
    save_report(report, out_dir / "report.json")  # last: its presence means "complete"
