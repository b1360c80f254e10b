"""report.json (schema_version 1), report.md, and the gate verdict.

The report is data first: a JSON document whose fields are the contract CI scripts read (see
README "Report fields"); the Markdown is rendered from that JSON, never from live objects.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from edgecompress.environment import cpu_description, environment  # noqa: F401 - re-exported
from edgecompress.errors import ConfigError
from edgecompress.io import atomic_write_text
from edgecompress.report_story import (
    environment_summary,
    model_ladder,
    pruning_plan,
    stage_metrics,
)

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1


def accuracy_drop_pp(teacher: float, candidate: float) -> float:
    """Teacher minus candidate accuracy, in percentage points."""
    return round(100.0 * (teacher - candidate), 4)


def dump_report(report: dict[str, Any]) -> str:
    """The canonical JSON text of a report (what ``report.json`` holds)."""
    return json.dumps(report, indent=2, sort_keys=False, default=str) + "\n"


def save_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write ``report`` to ``path`` atomically in the canonical form."""
    atomic_write_text(path, dump_report(report))
    return Path(path)


def load_report(path: str | Path) -> dict[str, Any]:
    """Read a report.json and check the parts every consumer relies on.

    The schema is tolerant (extra fields, ``null`` teacher/student sections of a single-artifact
    benchmark), but the structure the gate and ``compare`` read must be there.

    Raises:
        ConfigError: missing file, invalid JSON, wrong schema version or a malformed field;
            the message names the file and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"report not found: {path}")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"{path}: not a JSON report: {err}") from None
    problems = []
    if not isinstance(report, dict):
        raise ConfigError(f"{path}: a report must be a JSON object")
    if report.get("schema_version") != SCHEMA_VERSION:
        problems.append(f"schema_version: expected {SCHEMA_VERSION}, got "
                        f"{report.get('schema_version')!r}")
    targets = report.get("targets")
    if not isinstance(targets, list):
        problems.append("targets: expected a list")
        targets = []
    for i, entry in enumerate(targets):
        if not isinstance(entry, dict):
            problems.append(f"targets.{i}: expected an object")
            continue
        for key in ("name", "status"):
            if not isinstance(entry.get(key), str):
                problems.append(f"targets.{i}.{key}: missing or not a string")
        if entry.get("status") == "ok" and not isinstance(entry.get("latency_ms"), dict):
            problems.append(f"targets.{i}.latency_ms: missing for a target that ran")
    gate = report.get("gate", {})
    if not isinstance(gate, dict):
        problems.append("gate: expected an object")
    else:
        for key in ("thresholds", "target_thresholds"):
            if gate.get(key) is not None and not isinstance(gate.get(key), dict):
                problems.append(f"gate.{key}: expected an object")
    if problems:
        raise ConfigError(f"{path}: malformed report\n  " + "\n  ".join(problems))
    return report


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def pct(value: Any) -> str:
    """An accuracy (a fraction in report.json) as a percentage, as every table shows it."""
    return "-" if value is None else f"{100 * value:.2f} %"


def _models_section(report: dict[str, Any]) -> list[str]:
    t, s = report.get("teacher"), report.get("student")
    if not t or not s or s.get("accuracy_fp32") is None:
        return []
    prune = next((st.get("metrics") or {} for st in report.get("stages") or []
                  if st.get("name") == "prune"), {})
    # Before pruning the students had the unpruned shape; the final student is the pruned one.
    # The image prune stage records params_before/macs_before, the text one summary_before.
    before = prune.get("summary_before") or {}
    params0 = prune.get("params_before", before.get("params", s["params"]))
    macs0 = prune.get("macs_before", before.get("macs", s["macs"]))
    distilled = s.get("accuracy_fp32_distilled", s["accuracy_fp32"])
    unpruned_size = "-" if prune.get("enabled") else _size(s.get("size_bytes"))
    lines = ["## Models (teacher -> distilled -> pruned -> int8)", "",
             "| model | test accuracy | params | MACs | size |", "|---|---:|---:|---:|---:|",
             f"| teacher | {pct(t['accuracy'])} | {t['params']:,} | {t['macs']:,} | "
             f"{_size(t.get('size_bytes'))} |",
             f"| student (distilled) | {pct(distilled)} | {params0:,} | {macs0:,} | "
             f"{unpruned_size} |"]
    if s.get("baseline_accuracy_fp32") is not None:
        lines.append(f"| student (hard labels only) | {pct(s['baseline_accuracy_fp32'])} | "
                     f"{params0:,} | {macs0:,} | - |")
    if prune.get("enabled"):
        source = ("hard labels" if (report.get("distillation") or {}).get("kept") == "baseline"
                  else "distilled")
        lines.append(f"| student ({source}, pruned) | {pct(s['accuracy_fp32'])} | "
                     f"{s['params']:,} | {s['macs']:,} | {_size(s.get('size_bytes'))} |")
    # The int8 step: the deployed engines (accuracy of the engine itself on the test split).
    lines += [f"| student int8 ({row['model'].split('(')[-1].rstrip(')')}, "
              f"{row['size_what']}) | {pct(row['accuracy'])} | {s['params']:,} | "
              f"{s['macs']:,} | {_size(row['size_bytes'])} |"
              for row in model_ladder(report) if row["step"] == "int8"]
    lines += ["", "FP32 rows: PyTorch; size: the exported FP32 ONNX (the unpruned student of a "
              "pruned run is not exported)."]
    summary = f"Student/teacher parameters: 1/{t['params'] / max(s['params'], 1):.1f}."
    if s.get("distillation_gain_pp") is not None:
        summary += (f" Distillation gain over the hard-label baseline: "
                    f"{s['distillation_gain_pp']:+.2f} pp.")
    lines += ["", summary, ""]
    if prune.get("enabled") and prune.get("channels"):
        lines += _channels_table(prune)
    plan = pruning_plan(report)
    other = [g for g in (plan or {}).get("groups") or [] if g["unit"] != "channels"]
    if other:  # the text family: attention heads per layer and the FFN width
        lines += ["Pruning kept: " + "; ".join(
            f"{g['group']} {g['before']} -> {g['after']} {g['unit']}" for g in other) + ".", ""]
    return lines


def _channels_table(prune: dict[str, Any]) -> list[str]:
    """Channels kept per pruned group (the unchanged groups are only counted)."""
    channels = prune["channels"]
    changed = {name: pair for name, pair in channels.items() if pair[0] != pair[1]}
    lines = [f"Pruning ({prune.get('plan', '?')} plan, {prune.get('importance', '?')} importance): "
             f"{len(changed)} of {len(channels)} channel groups thinned.", ""]
    if changed:
        lines += ["| group | channels | kept |", "|---|---:|---:|"]
        lines += [f"| {name} | {before} -> {after} | {after / before:.0%} |"
                  for name, (before, after) in changed.items()]
        lines.append("")
    return lines


def distillation_sentence(block: dict[str, Any]) -> str:
    """Which student the distill stage carried forward and by how much (one sentence)."""
    setting = f"{block['loss']}, T={block['temperature']:g}, alpha={block['alpha']:g}"
    if block.get("baseline") is None:
        return f"Distilled student carried forward (no hard-label baseline ran; {setting})."
    d, b = block["distilled"], block["baseline"]
    kept = ("the **distilled** student" if block["kept"] == "distilled"
            else "the **hard-label** student (distillation did not pay on validation)")
    return (f"Carried forward: {kept}. Validation: distilled {pct(d['val_accuracy'])} vs "
            f"hard-label {pct(b['val_accuracy'])} ({block['val_gain_pp']:+.2f} pp); test: "
            f"{pct(d['test_accuracy'])} vs {pct(b['test_accuracy'])} "
            f"({block['gain_pp']:+.2f} pp). Settings: {setting}.")


def _distillation_section(report: dict[str, Any]) -> list[str]:
    block = report.get("distillation")
    if not block:
        return []
    lines = ["## Distillation", "", distillation_sentence(block), ""]
    search = block.get("search")
    if search:
        chosen = search["chosen"]
        lines += [f"Settings searched on the validation split "
                  f"({search['epochs_per_candidate']} epochs per candidate):", "",
                  "| loss | T | alpha | val accuracy | |", "|---|---:|---:|---:|---|"]
        keys = ("loss", "temperature", "alpha")
        lines += [f"| {c['loss']} | {c['temperature']:g} | {c['alpha']:g} | "
                  f"{pct(c['val_accuracy'])} | "
                  f"{'chosen' if all(c[k] == chosen[k] for k in keys) else ''} |"
                  for c in search["candidates"]]
        lines.append("")
    return lines


def _num(value: Any) -> str:
    """Check values for tables: floats to 4 significant digits, the rest as is."""
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _size(value: Any) -> str:
    return "-" if value is None else f"{value:,} B"


def _speedup(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _int8_section(report: dict[str, Any]) -> list[str]:
    """INT8 kernels per engine, and per preset the int8-vs-FP32 student accuracy and the layers
    left in FP32 (never silent)."""
    lines: list[str] = []
    engines = [e for e in report["targets"]
               if e["status"] == "ok" and e.get("precision") == "int8" and "int8_kernels" in e]
    quant = report.get("quantization") or {}
    if not engines and not quant:
        return lines
    lines += ["", "## INT8", ""]
    method = (stage_metrics(report, "export").get("int8") or {}).get("method")
    if not quant and method:  # the text family quantizes at export, without a qat stage
        lines += [f"Quantization: {method} at export (PTQ; this family has no qat stage).", ""]
    for e in engines:
        kernels = ", ".join(f"{op} x{n}" for op, n in e["int8_kernels"].items()) or "none"
        fp32 = ", ".join(e.get("fp32_nodes") or []) or "none"
        lines.append(f"- **{e['name']}** engine: int8 kernels {kernels}; conv/linear left in "
                     f"FP32: {fp32}")
    if quant:
        lines += ["", "| preset | mode | int8 test accuracy | FP32 student | drop vs FP32 (pp) | "
                  "int8 layers | FP32 layers |", "|---|---|---:|---:|---:|---:|---|"]
        for name, p in quant.get("presets", {}).items():
            if p.get("status") != "ok":
                lines.append(f"| {name} | {p.get('status')}: {p.get('reason', '')} | | | | | |")
                continue
            mode, choice = quant["mode"], p.get("qat_vs_ptq")
            if choice:
                mode = (f"qat, {choice['kept'].upper()} kept (val: QAT "
                        f"{pct(choice['qat_val_accuracy'])}, PTQ "
                        f"{pct(choice['ptq_val_accuracy'])})")
            lines.append(f"| {name} | {mode} | {pct(p.get('test_accuracy'))} | "
                         f"{pct(quant.get('fp32_test_accuracy'))} | "
                         f"{_fmt(p.get('test_drop_vs_fp32_pp'), '.2f')} | "
                         f"{len(p.get('layers_quantized') or [])} | "
                         f"{', '.join(p.get('fp32_layers') or []) or '-'} |")
        for name, p in quant.get("presets", {}).items():
            crit = p.get("accuracy_criterion") or {}
            if crit.get("attempts"):
                tried = "; ".join(f"FP32 [{', '.join(a.get('fp32_layers') or []) or 'none'}]: "
                                  f"drop {_fmt(a.get('val_drop_vs_fp32_pp'), '.2f')} pp"
                                  for a in crit["attempts"])
                lines += ["", f"Accuracy criterion ({name}, max drop "
                          f"{_fmt(crit.get('max_accuracy_drop'), 'g')} pp on validation) "
                          f"{'met' if crit.get('met') else 'NOT met'}: {tried}."]
        for name, p in quant.get("presets", {}).items():
            if p.get("sensitivity"):
                lines += ["", f"Layer sensitivity ({name}, one layer int8 at a time, "
                          "validation split), most sensitive first:", "",
                          "| layer | drop (pp) | logit MSE |", "|---|---:|---:|"]
                lines += [f"| {s['layer']} | {s['accuracy_drop_pp']:.2f} | "
                          f"{s['logit_mse']:.3g} |" for s in p["sensitivity"]]
    return lines


def environment_line(report: dict[str, Any]) -> str:
    """ISA class, cores, threads and library versions in one line ('' without an environment)."""
    env = environment_summary(report)
    if env is None:
        return ""
    versions = ", ".join(f"{k} {v}" for k, v in sorted(env["packages"].items()))
    facts = [f"{env['machine'] or ''} ISA {env['isa']}".strip() if env["isa"] else "",
             f"{env['logical_cores']} logical cores" if env["logical_cores"] else "",
             f"{env['threads']} torch threads" if env["threads"] else "",
             f"Python {env['python']}" if env["python"] else "", versions]
    return "Environment: " + "; ".join(f for f in facts if f) + "."


def _crop(dataset: dict[str, Any]) -> Any:
    """The photo preset's crop size, from its recorded eval pipeline."""
    steps = dataset["image_transforms"].get("eval") or []
    return next((step.get("size") for step in steps if isinstance(step, dict)
                 and step.get("op") == "CenterCrop"), "?")


def render_markdown(report: dict[str, Any]) -> str:
    """A human-readable summary of a report.json document (teacher-less reports included)."""
    env = report.get("environment") or {}
    cpu = env.get("cpu") or {}
    dataset = report.get("dataset") or {}
    title = (report.get("recipe") or {}).get("name", "")
    data_line = (f"Dataset **{dataset['name']}**, {dataset.get('eval_samples')} test samples."
                 if dataset.get("name") else "No dataset: latency on synthetic inputs only.")
    samples = dataset.get("samples") if isinstance(dataset.get("samples"), dict) else None
    if dataset.get("name") and samples:
        data_line = (f"Dataset **{dataset['name']}** ({dataset.get('source', '?')}), "
                     f"train/val/test {samples.get('train')}/{samples.get('val')}/"
                     f"{samples.get('test')} samples"
                     + (f" (test subsampled from {dataset['test_shrunk_from']})"
                        if dataset.get("test_shrunk_from") else "")
                     + (", labels remapped" if dataset.get("label_mapping") else "")
                     + (", streamed from disk" if dataset.get("streamed") else "")
                     + (f", photo transforms (crop {_crop(dataset)})"
                        if isinstance(dataset.get("image_transforms"), dict) else "") + ".")
    lines = [f"# edgecompress report: {title}", "",
             f"{data_line} CPU: {cpu.get('model', '?')} "
             f"(flags: {', '.join(cpu.get('flags') or []) or '-'}).", ""]
    env_line = environment_line(report)
    if env_line:
        lines += [env_line, ""]
    lines += _models_section(report)
    lines += _distillation_section(report)
    lines += ["## Targets", "",
              "| target | backend | precision | status | accuracy | drop (pp) | p50 ms | p90 ms | "
              "p99 ms | teacher p50 ms | speedup | size |",
              "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    ran = []
    for e in report["targets"]:
        if e["status"] != "ok":
            lines.append(f"| {e['name']} | {e.get('backend', '')} | {e.get('precision', '')} | "
                         f"{e['status']}: {e.get('reason', '')} | | | | | | | | |")
            continue
        ran.append(e)
        lat, tlat = e["latency_ms"], e.get("teacher_latency_ms") or {}
        label = f"{e['name']} ({e['note']})" if e.get("note") else e["name"]
        lines.append(f"| {label} | {e['backend']} | {e['precision']} | ok | "
                     f"{pct(e.get('accuracy'))} | {_fmt(e.get('accuracy_drop'), '.2f')} | "
                     f"{_fmt(lat['p50'], '.3f')} | {_fmt(lat['p90'], '.3f')} | "
                     f"{_fmt(lat['p99'], '.3f')} | {_fmt(tlat.get('p50'), '.3f')} | "
                     f"{_speedup(e.get('speedup_vs_teacher'))} | {_size(e.get('size_bytes'))} |")
    if ran:
        lines += ["", "### Latency detail and parity", "",
                  "| target | mean ms | stdev ms | min ms | max ms | runs | threads | input | "
                  "top-1 agreement | max abs diff | SNR dB |",
                  "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
        for e in ran:
            lat, par = e["latency_ms"], e.get("parity") or {}
            shape = "x".join(str(d) for d in lat.get("input_shape") or []) or "-"
            lines.append(f"| {e['name']} | {_fmt(lat.get('mean'), '.4f')} | "
                         f"{_fmt(lat.get('stdev'), '.4f')} | {_fmt(lat.get('min'), '.4f')} | "
                         f"{_fmt(lat.get('max'), '.4f')} | {lat.get('runs', '-')} | "
                         f"{lat.get('threads', '-')} | {shape} | "
                         f"{_fmt(par.get('top1_agreement'))} | "
                         f"{_fmt(par.get('max_abs_diff'), '.2e')} | "
                         f"{_fmt(par.get('snr_db'), '.1f')} |")
    from edgecompress.bench.speed import speed_markdown

    lines += speed_markdown(report)  # interleaved timing, int8 vs FP32 twin, % of peak
    lines += _int8_section(report)
    gate = report["gate"]
    lines += ["", "## Gate", "", "**PASSED**" if gate["passed"] else "**FAILED**"]
    lines += [f"- {v}" for v in gate["violations"]]
    checks = [c for c in gate.get("checks") or [] if c["check"] != "status"]
    if checks:
        lines += ["", "| target | check | outcome | value | limit |", "|---|---|---|---:|---:|"]
        lines += [f"| {c['target']} | {c['check']} | {c['outcome']} | {_num(c.get('value'))} | "
                  f"{_num(c.get('limit'))} |" for c in checks]
    return "\n".join(lines) + "\n"


def print_report_and_verdict(out: Path) -> int:
    """Print a finished run's report.md; 1 (with the violations) if its gate failed, else 0."""
    import click

    report = json.loads((out / "report.json").read_text())
    click.echo((out / "report.md").read_text())
    click.echo(f"report: {out / 'report.json'}")
    if not report["gate"]["passed"]:
        click.echo("gate FAILED:\n  " + "\n  ".join(report["gate"]["violations"]), err=True)
        return 1
    return 0
