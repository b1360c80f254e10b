"""report.json (schema_version 1), report.md, and the gate verdict.

The report is data first: a JSON document whose fields are the contract CI scripts read (see
README "Report fields"); the Markdown is rendered from that JSON, never from live objects.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


def cpu_description() -> dict[str, Any]:
    """CPU model and the instruction-set flags that decide which int8 kernels can run."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = line.split(":", 1)[1].split()
                break
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
    return {"model": model, "machine": platform.machine(),
            "flags": [f for f in wanted if f in flags], "logical_cores": os.cpu_count()}


def accuracy_drop_pp(teacher: float, candidate: float) -> float:
    """Teacher minus candidate accuracy, in percentage points."""
    return round(100.0 * (teacher - candidate), 4)


def judge(targets: list[dict[str, Any]], *, max_accuracy_drop: float | None) -> dict[str, Any]:
    """Apply the gate thresholds to the target entries; list every violation."""
    violations = []
    for t in targets:
        if t.get("status") != "ok":
            continue
        if max_accuracy_drop is not None and t["accuracy_drop"] > max_accuracy_drop:
            violations.append(f"{t['name']}: accuracy drop {t['accuracy_drop']:.2f} pp > "
                              f"{max_accuracy_drop:.2f} pp")
    return {"passed": not violations, "thresholds": {"max_accuracy_drop": max_accuracy_drop},
            "violations": violations}


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def render_markdown(report: dict[str, Any]) -> str:
    """A human-readable summary of a report.json document."""
    t, s = report["teacher"], report["student"]
    lines = [f"# edgecompress report: {report['recipe'].get('name', '')}", "",
             f"Dataset **{report['dataset']['name']}**, {report['dataset']['eval_samples']} test "
             f"samples. CPU: {report['environment']['cpu']['model']}.", "",
             "## Models (PyTorch, FP32)", "",
             "| model | test accuracy | params | MACs |", "|---|---:|---:|---:|",
             f"| teacher | {_fmt(t['accuracy'])} | {t['params']:,} | {t['macs']:,} |",
             f"| student (distilled) | {_fmt(s['accuracy_fp32'])} | {s['params']:,} | "
             f"{s['macs']:,} |"]
    if s.get("baseline_accuracy_fp32") is not None:
        lines.append(f"| student (hard labels only) | {_fmt(s['baseline_accuracy_fp32'])} | "
                     f"{s['params']:,} | {s['macs']:,} |")
    lines += ["", f"Student/teacher parameters: 1/{t['params'] / max(s['params'], 1):.1f}. "
              f"Distillation gain over the hard-label baseline: "
              f"{_fmt(s.get('distillation_gain_pp'), '+.2f')} pp.", "",
              "## Targets", "",
              "| target | backend | precision | status | accuracy | drop (pp) | p50 ms | p90 ms | "
              "p99 ms | teacher p50 ms | speedup | size |",
              "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for e in report["targets"]:
        if e["status"] != "ok":
            lines.append(f"| {e['name']} | {e['backend']} | {e['precision']} | {e['status']}: "
                         f"{e.get('reason', '')} | | | | | | | | |")
            continue
        lat, tlat = e["latency_ms"], e["teacher_latency_ms"]
        lines.append(f"| {e['name']} | {e['backend']} | {e['precision']} | ok | "
                     f"{_fmt(e['accuracy'])} | {_fmt(e['accuracy_drop'], '.2f')} | "
                     f"{_fmt(lat['p50'], '.3f')} | {_fmt(lat['p90'], '.3f')} | "
                     f"{_fmt(lat['p99'], '.3f')} | {_fmt(tlat['p50'], '.3f')} | "
                     f"{_fmt(e['speedup_vs_teacher'], '.2f')}x | {e['size_bytes']:,} B |")
    gate = report["gate"]
    lines += ["", "## Gate", "", "**PASSED**" if gate["passed"] else "**FAILED**"]
    lines += [f"- {v}" for v in gate["violations"]]
    return "\n".join(lines) + "\n"
