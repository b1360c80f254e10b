"""The text-classification pipeline: data -> teacher -> distill -> prune -> export -> bench ->
report, run by the image pipeline's machinery (run directory ownership, per-stage manifests with
config/input/output hashes, resume, atomic writes) with text stages and a text preflight.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from edgecompress.distributed import init_distributed, shutdown_distributed
from edgecompress.errors import BackendUnavailable, ConfigError
from edgecompress.io import atomic_write_json, atomic_write_text
from edgecompress.pipeline import Pipeline, prepare_run_dir, read_stage_manifest
from edgecompress.runlock import run_dir_lock
from edgecompress.stages.base import Stage, StageResult
from edgecompress.text.context import TextContext
from edgecompress.text.recipe import TextRecipe, text_recipe_to_dict

logger = logging.getLogger(__name__)

REPORT_UPSTREAM = ("data", "teacher", "distill", "prune", "export", "bench")


def text_stages() -> list[Stage]:
    """The stages in order."""
    from edgecompress.text.engines import TextBenchStage, TextExportStage
    from edgecompress.text.stages import DistillStage, TeacherStage, TextDataStage, TextPruneStage

    return [TextDataStage(), TeacherStage(), DistillStage(), TextPruneStage(), TextExportStage(),
            TextBenchStage(), TextReportStage()]


def text_preflight(ctx: TextContext) -> None:
    """Fail before writing anything: runtimes present, data loads, teacher directory exists,
    student layers fit the teacher (when its depth is known), layer map in range."""
    from edgecompress.text.models import transformers_module

    transformers_module()
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailable("the text pipeline's engines need onnxruntime: "
                                 "pip install 'edgecompress[onnx]'") from exc
    recipe = ctx.recipe
    b = ctx.bundle
    logger.info("data: %s, classes %s, train/val/test %d/%d/%d", b.name, b.classes,
                len(b.train.texts), len(b.val.texts), len(b.test.texts))
    depth = recipe.teacher.scratch.layers if recipe.teacher.scratch else None
    if recipe.teacher.path is not None:
        cfg = recipe.teacher.path / "config.json"
        if not cfg.is_file():
            from edgecompress.errors import ModelError

            raise ModelError(f"teacher.path: {recipe.teacher.path} is not a Hugging Face model "
                             "directory (no config.json)")
        try:
            depth = int(json.loads(cfg.read_text()).get("num_hidden_layers"))
        except (ValueError, TypeError):
            depth = None
    if depth is not None:
        from edgecompress.text.losses import check_layer_map
        from edgecompress.text.models import kept_layers

        kept = kept_layers(recipe.student, depth)
        for section in (recipe.distill, recipe.prune.recovery, recipe.quant.qat):
            if section.layer_map is not None:
                check_layer_map([tuple(p) for p in section.layer_map], len(kept), depth)
    if recipe.prune.enabled and recipe.prune.heads_ratio == 0 and recipe.prune.ffn_ratio == 0:
        raise ConfigError("prune.enabled: set prune.heads_ratio and/or prune.ffn_ratio > 0")


class TextPipeline(Pipeline):
    """:class:`~edgecompress.pipeline.Pipeline` with text stages, context and preflight."""

    def __init__(self, recipe: TextRecipe, run_dir: str | Path,
                 stages: list[Stage] | None = None) -> None:
        super().__init__(recipe, run_dir, stages if stages is not None else text_stages())

    def run(self, *, force: str | None = None, overwrite: bool = False) -> dict[str, Any]:
        if force is not None and force not in self.names:
            raise ConfigError(f"--force {force}: unknown stage; stages are "
                              f"{', '.join(self.names)}")
        import torch

        if self.recipe.threads:
            torch.set_num_threads(self.recipe.threads)
        dist_info = init_distributed(self.recipe.device)
        try:
            ctx = TextContext(self.recipe, self.run_dir, dist_info)
            text_preflight(ctx)
            with run_dir_lock(self.run_dir):  # one process per run directory
                prepare_run_dir(self.run_dir, self.recipe, overwrite=overwrite)
                atomic_write_json(self.run_dir / "recipe.json", text_recipe_to_dict(self.recipe))
                return self._run_stages(ctx, force)
        finally:
            shutdown_distributed()


class TextReportStage(Stage):
    """``report.json`` (schema 1), ``report.md`` and ``junit.xml``."""

    name = "report"

    def config(self, ctx: TextContext) -> dict[str, Any]:
        return {"recipe": text_recipe_to_dict(ctx.recipe)}

    def inputs(self, ctx: TextContext) -> dict[str, Path]:
        return {name: ctx.run_dir / name / "stage.json" for name in REPORT_UPSTREAM}

    def run(self, ctx: TextContext) -> StageResult:
        from edgecompress.junit import write_junit
        from edgecompress.report import render_markdown, save_report

        report = build_text_report(ctx)
        json_path, md_path = ctx.run_dir / "report.json", ctx.run_dir / "report.md"
        save_report(report, json_path)
        atomic_write_text(md_path, render_markdown(report) + text_markdown(report))
        junit = write_junit(report["gate"], ctx.run_dir / "junit.xml")
        return StageResult(outputs={"report": json_path, "report_md": md_path, "junit": junit},
                           metrics={"gate_passed": report["gate"]["passed"]})


def build_text_report(ctx: TextContext) -> dict[str, Any]:
    """The schema-1 report of a finished text run (targets carry ``int8_kernels``)."""
    from edgecompress.gate import judge, recipe_thresholds
    from edgecompress.report import SCHEMA_VERSION, accuracy_drop_pp

    run_dir = ctx.run_dir
    m = {name: read_stage_manifest(run_dir, name).get("metrics", {}) for name in REPORT_UPSTREAM}
    bench = json.loads((run_dir / "bench" / "results.json").read_text())
    targets = []
    for entry in bench["targets"]:
        entry = {k: v for k, v in entry.items() if k != "samples_ms"}
        entry["accuracy_drop"] = accuracy_drop_pp(entry["teacher_accuracy"], entry["accuracy"])
        targets.append(entry)
    t_sum = m["teacher"]["summary"]
    pruned = m["prune"].get("enabled", False)
    s_sum = m["prune"]["summary"] if pruned else m["distill"]["summary"]
    student_acc = m["prune"]["test_accuracy"] if pruned else m["distill"]["test_accuracy"]
    teacher_acc = m["teacher"]["test_accuracy"]
    stages = []
    for name in REPORT_UPSTREAM:
        manifest = read_stage_manifest(run_dir, name)
        metrics = {k: v for k, v in manifest.get("metrics", {}).items()
                   if k not in ("history", "ops")}
        stages.append({"name": name, "seconds": manifest.get("seconds"), "metrics": metrics})
    export = m["export"]
    return {
        "schema_version": SCHEMA_VERSION,
        "recipe": text_recipe_to_dict(ctx.recipe),
        "environment": text_environment(),
        "dataset": {"name": m["data"]["name"], "eval_samples": m["data"]["test"],
                    "num_classes": len(m["data"]["classes"]), "classes": m["data"]["classes"],
                    "input_shape": None},
        "teacher": {"accuracy": teacher_acc, "params": t_sum["params"],
                    "encoder_params": t_sum["encoder_params"], "macs": t_sum["macs"],
                    "layers": t_sum["layers"], "size_bytes": export["teacher"]["size_bytes"],
                    "fused_ops": export["teacher"].get("fused", {})},
        "student": {"accuracy_fp32": student_acc,
                    "accuracy_fp32_distilled": m["distill"]["test_accuracy"],
                    "params": s_sum["params"], "encoder_params": s_sum["encoder_params"],
                    "macs": s_sum["macs"], "layers": s_sum["layers"], "heads": s_sum["heads"],
                    "intermediate_size": s_sum["intermediate_size"],
                    "size_bytes": export["student"]["size_bytes"],
                    "fused_ops": export["student"].get("fused", {}),
                    "encoder_params_ratio": s_sum["encoder_params"] / t_sum["encoder_params"],
                    "accuracy_retained": student_acc / teacher_acc if teacher_acc else None,
                    "baseline_accuracy_fp32": None, "distillation_gain_pp": None},
        "stages": stages,
        "targets": targets,
        "gate": judge(targets, *recipe_thresholds(ctx.recipe)),
    }


def text_environment() -> dict[str, Any]:
    """The common environment plus the libraries that shape text artifacts."""
    from importlib import metadata

    from edgecompress.report import environment

    env = environment()
    for name in ("transformers", "tokenizers", "torchao", "torch-pruning"):
        try:
            env["packages"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return env


def text_markdown(report: dict[str, Any]) -> str:
    """Text-specific lines appended to the common report.md."""
    t, s = report["teacher"], report["student"]
    lines = ["", "## Transformer sizes", "",
             "| model | layers | encoder params | MACs (seq 128) | test accuracy |",
             "|---|---:|---:|---:|---:|",
             f"| teacher | {t['layers']} | {t['encoder_params']:,} | {t['macs']:,} | "
             f"{t['accuracy']:.4f} |",
             f"| student | {s['layers']} (heads {s['heads']}, FFN {s['intermediate_size']}) | "
             f"{s['encoder_params']:,} | {s['macs']:,} | {s['accuracy_fp32']:.4f} |", "",
             f"Student encoder parameters: {100 * s['encoder_params_ratio']:.1f} % of the "
             f"teacher's; accuracy retained: {100 * (s['accuracy_retained'] or 0):.1f} %.", ""]
    fused = ", ".join(f"{role} {_fused_text(report[role].get('fused_ops'))}"
                      for role in ("teacher", "student"))
    lines += [f"ORT transformer fusions in the FP32 engines: {fused}.", ""]
    for target in report["targets"]:
        lines += _engines_table(target)
    return "\n".join(lines) + "\n"


def _fused_text(fused: dict[str, int] | None) -> str:
    if not fused:
        return "(none)"
    return "(" + ", ".join(f"{op} {n}" for op, n in sorted(fused.items())) + ")"


def _engines_table(t: dict[str, Any]) -> list[str]:
    """One target's engines side by side (same interleaved rounds): the FP32 teacher, the
    teacher through quantize_dynamic (the reference), the FP32 twin and this engine."""
    ref = t.get("reference")
    if t.get("status") != "ok":
        return []

    def row(name: str, acc: float | None, size: int | None, lat: dict | None) -> str:
        p50 = lat.get("p50") if lat else None
        vs_ref = (ref["latency_ms"]["p50"] / p50) if (ref and p50) else None
        return (f"| {name} | {_fmt(acc, '.4f')} | {_fmt(size and size / 1e6, '.1f')} | "
                f"{_fmt(p50, '.2f')} | {_fmt(vs_ref, '.2f')} |")

    lines = [f"### {t['name']}: engines at seq_len {t.get('seq_len')}, "
             f"{t.get('threads')} thread(s), same interleaved rounds", "",
             "| engine | test accuracy | size MB | p50 ms | reference p50 / p50 |",
             "|---|---:|---:|---:|---:|",
             row("teacher FP32", t.get("teacher_accuracy"), t.get("teacher_size_bytes"),
                 t.get("teacher_latency_ms"))]
    if ref:
        lines.append(row(ref["name"], ref["accuracy"], ref["size_bytes"], ref["latency_ms"]))
    if t.get("fp32_accuracy") is not None:
        lines.append(row("student FP32", t["fp32_accuracy"], t.get("fp32_size_bytes"),
                         t.get("fp32_latency_ms")))
    lines.append(row(f"student {t['precision'].upper()} (this target)", t.get("accuracy"),
                     t.get("size_bytes"), t.get("latency_ms")))
    if ref and ref.get("speedup_vs_reference"):
        lines += ["", f"This engine vs teacher + quantize_dynamic: "
                      f"{ref['speedup_vs_reference']:.2f}x faster (median of same-round ratios"
                      f"{', noisy' if ref.get('speedup_noisy') else ''}"
                      f"{_cpu_ratio(ref.get('speedup_vs_reference_cpu'))}), accuracy "
                      f"{100 * (t['accuracy'] - ref['accuracy']):+.2f} pp."]
    return lines + [""]


def _cpu_ratio(value: float | None) -> str:
    return "" if value is None else f"; {value:.2f}x on CPU time"


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def run_text_recipe(recipe: TextRecipe, out: Path, force: str | None = None,
                    overwrite: bool = False) -> dict[str, Any]:
    """Run the pipeline and return the report."""
    TextPipeline(recipe, out).run(force=force, overwrite=overwrite)
    return json.loads((Path(out) / "report.json").read_text())
