"""report stage: assemble report.json, report.md, report.html and junit.xml from the stage
manifests, and judge the gate. One stage for every model family: the family supplies its
dataset/teacher/student blocks (:meth:`~edgecompress.families.ModelFamily.report_body`), this
stage adds the targets, stage timings, environment and gate and renders every format."""

from __future__ import annotations

import json
from typing import Any

from edgecompress.errors import BackendUnavailable
from edgecompress.gate import judge, recipe_thresholds
from edgecompress.io import atomic_write_text
from edgecompress.junit import write_junit
from edgecompress.report import (
    SCHEMA_VERSION,
    accuracy_drop_pp,
    environment,
    render_markdown,
    save_report,
)
from edgecompress.report_html import samples_from_results, write_html_report
from edgecompress.stages.base import Context, Stage, StageResult, read_stage_manifest

#: Stage metrics too bulky for report.json (they stay in each stage.json).
_BULKY_METRICS = ("history", "ops")


class ReportStage(Stage):
    """Produces ``report.json``, ``report.md``, ``report.html`` and ``junit.xml`` at the top of
    the run directory (report.html only where matplotlib is installed)."""

    name = "report"

    def config(self, ctx: Context) -> dict[str, Any]:
        return {"recipe": ctx.family.recipe_to_dict(ctx.recipe), "schema_version": SCHEMA_VERSION}

    def inputs(self, ctx: Context) -> dict[str, Any]:
        return {name: ctx.run_dir / name / "stage.json" for name in ctx.family.report_upstream}

    def run(self, ctx: Context) -> StageResult:
        report = build_report(ctx)
        json_path, md_path = ctx.run_dir / "report.json", ctx.run_dir / "report.md"
        save_report(report, json_path)
        atomic_write_text(md_path, render_markdown(report) + ctx.family.report_markdown(report))
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


def build_report(ctx: Context) -> dict[str, Any]:
    """The schema-1 report document for a finished run of any family."""
    run_dir, family = ctx.run_dir, ctx.family
    manifests = {name: read_stage_manifest(run_dir, name) for name in family.report_upstream}
    bench = json.loads((run_dir / "bench" / "results.json").read_text())
    targets = []
    for entry in bench["targets"]:
        entry = {k: v for k, v in entry.items() if k != "samples_ms"}
        if entry.get("status", "ok") == "ok":
            # None where the device only timed the engine (trtexec, adb benchmark_model).
            entry["accuracy_drop"] = (
                accuracy_drop_pp(entry["teacher_accuracy"], entry["accuracy"])
                if entry.get("accuracy") is not None and entry.get("teacher_accuracy") is not None
                else None)
        targets.append(entry)
    stages = [{"name": name, "seconds": manifest.get("seconds"),
               "metrics": {k: v for k, v in manifest.get("metrics", {}).items()
                           if k not in _BULKY_METRICS}}
              for name, manifest in manifests.items()]
    body = family.report_body(ctx, {name: m.get("metrics", {}) for name, m in manifests.items()},
                              targets)
    env = environment()
    if family.report_packages:
        from importlib import metadata

        for name in family.report_packages:
            try:
                env["packages"][name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                pass
    report = {"schema_version": SCHEMA_VERSION, "task": family.task,
              "recipe": family.recipe_to_dict(ctx.recipe), "environment": env}
    report.update(body)
    report.update({"stages": stages, "targets": targets})
    report["gate"] = judge(targets, *recipe_thresholds(ctx.recipe), run=family.run_blocks(report))
    return report
