"""report stage: assemble report.json, report.md, report.html and junit.xml from the stage
manifests, and judge the gate."""

from __future__ import annotations

import json
from typing import Any

from edgecompress.errors import BackendUnavailable
from edgecompress.gate import judge, recipe_thresholds
from edgecompress.io import atomic_write_text
from edgecompress.junit import write_junit
from edgecompress.recipe import recipe_to_dict
from edgecompress.report import (
    SCHEMA_VERSION,
    accuracy_drop_pp,
    environment,
    render_markdown,
    save_report,
)
from edgecompress.report_html import samples_from_results, write_html_report
from edgecompress.stages.base import Context, Stage, StageResult, read_stage_manifest
from edgecompress.stages.common import load_final_student, load_teacher


class ReportStage(Stage):
    """Produces ``report.json``, ``report.md``, ``report.html`` and ``junit.xml`` at the top of
    the run directory (report.html only where matplotlib is installed)."""

    name = "report"

    def config(self, ctx: Context) -> dict[str, Any]:
        return {"recipe": recipe_to_dict(ctx.recipe), "schema_version": SCHEMA_VERSION}

    def inputs(self, ctx: Context) -> dict[str, Any]:
        return {name: ctx.run_dir / name / "stage.json"
                for name in UPSTREAM_STAGES}

    def run(self, ctx: Context) -> StageResult:
        report = build_report(ctx)
        json_path, md_path = ctx.run_dir / "report.json", ctx.run_dir / "report.md"
        save_report(report, json_path)
        atomic_write_text(md_path, render_markdown(report))
        outputs = {"report": json_path, "report_md": md_path,
                   "junit": write_junit(report["gate"], ctx.run_dir / "junit.xml")}
        results = json.loads((ctx.run_dir / "bench" / "results.json").read_text())
        html_path = write_html_report(report, ctx.run_dir / "report.html",
                                      samples_from_results(results))
        if html_path is not None:
            outputs["report_html"] = html_path
        if not any(t["status"] == "ok" for t in report["targets"]):
            reasons = "; ".join(f"{t['name']}: {t.get('reason')}" for t in report["targets"])
            raise BackendUnavailable(f"no target could run on this machine ({reasons}); "
                                     f"report written to {json_path}")
        return StageResult(outputs=outputs, metrics={"gate_passed": report["gate"]["passed"]})


# Stages whose manifests feed the report, in pipeline order.
UPSTREAM_STAGES = ("data", "finetune", "distill", "prune", "qat", "export", "bench")


def quantization_summary(qat: dict[str, Any]) -> dict[str, Any] | None:
    """Per INT8 preset: mode, accuracy of the PyTorch int8 model vs the float student, which
    layers are int8 and which stayed FP32 (and why: sensitivity, accuracy criterion)."""
    if not qat.get("enabled"):
        return None
    out: dict[str, Any] = {"mode": qat["mode"], "fp32_test_accuracy": qat["fp32"]["test_accuracy"],
                           "presets": {}}
    keys = ("status", "reason", "targets", "test_accuracy", "test_drop_vs_fp32_pp",
            "layers_quantized", "fp32_layers", "sensitivity", "accuracy_criterion", "parity",
            "size_bytes", "rationale")
    for name, entry in qat.get("presets", {}).items():
        out["presets"][name] = {k: entry[k] for k in keys if k in entry}
        choice = entry.get("qat") or {}
        if "kept" in choice:  # qat mode compared with PTQ on the validation split
            out["presets"][name]["qat_vs_ptq"] = {k: choice[k] for k in (
                "kept", "qat_val_accuracy", "ptq_val_accuracy", "ptq_calibration")}
    return out


def build_report(ctx: Context) -> dict[str, Any]:
    """The schema-1 report document for a finished run."""
    from edgecompress.models import count_macs, count_params

    run_dir, bundle = ctx.run_dir, ctx.bundle
    finetune = read_stage_manifest(run_dir, "finetune")["metrics"]
    distill = read_stage_manifest(run_dir, "distill")["metrics"]
    export = read_stage_manifest(run_dir, "export")["metrics"]
    bench = json.loads((run_dir / "bench" / "results.json").read_text())
    teacher = load_teacher(ctx)
    student = load_final_student(ctx)
    shape = bundle.input_shape
    teacher_acc = finetune["test_accuracy"]
    targets = []
    for entry in bench["targets"]:
        entry = {k: v for k, v in entry.items() if k != "samples_ms"}
        if entry["status"] == "ok":
            # None where the device only timed the engine (trtexec, adb benchmark_model).
            entry["accuracy_drop"] = (
                accuracy_drop_pp(entry["teacher_accuracy"], entry["accuracy"])
                if entry.get("accuracy") is not None and entry.get("teacher_accuracy") is not None
                else None)
        targets.append(entry)
    baseline = distill.get("baseline", {}).get("test_accuracy")
    prune = read_stage_manifest(run_dir, "prune").get("metrics", {})
    # The exported student is the pruned one when pruning ran: report its accuracy.
    # Without pruning it is the student the distill stage carried forward (distilled or, when
    # that was worse on validation, the hard-label one).
    student_acc = prune["test_accuracy"] if prune.get("enabled") else \
        (distill.get("final") or distill["student"])["test_accuracy"]
    distillation = distill.get("distillation")
    stages = []
    for name in UPSTREAM_STAGES:
        manifest = read_stage_manifest(run_dir, name)
        metrics = {k: v for k, v in manifest.get("metrics", {}).items() if k != "history"}
        stages.append({"name": name, "seconds": manifest.get("seconds"), "metrics": metrics})
    return {
        "schema_version": SCHEMA_VERSION,
        "recipe": recipe_to_dict(ctx.recipe),
        "environment": environment(),
        "dataset": {**bundle.describe(), "eval_samples": int(len(bundle.test.y)),
                    "num_classes": bundle.num_classes, "input_shape": list(shape),
                    "augmentations": {"finetune": ctx.recipe.stages.finetune.augment,
                                      "distill": ctx.recipe.stages.distill.augment}},
        "teacher": {"accuracy": teacher_acc, "params": count_params(teacher),
                    "macs": count_macs(teacher, shape),
                    "size_bytes": export["teacher"]["size_bytes"]},
        "student": {"accuracy_fp32": student_acc,
                    "accuracy_fp32_distilled": distill["student"]["test_accuracy"],
                    "params": count_params(student), "macs": count_macs(student, shape),
                    "size_bytes": export["student"]["size_bytes"],
                    "baseline_accuracy_fp32": baseline,
                    "distillation_gain_pp": distill.get("distillation_gain_pp")},
        "distillation": distillation,
        "quantization": quantization_summary(read_stage_manifest(run_dir, "qat")
                                             .get("metrics", {})),
        "stages": stages,
        "targets": targets,
        "gate": judge(targets, *recipe_thresholds(ctx.recipe),
                      run={"distillation": distillation}),
    }
