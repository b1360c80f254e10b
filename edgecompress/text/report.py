"""The text family's part of the report: its dataset/teacher/student blocks (transformer
sizes, ORT fusions) and the report.md lines of its own (the engines side by side, including the
teacher through ``quantize_dynamic``). The shared report stage does the rest."""

from __future__ import annotations

from typing import Any

from edgecompress.report import pct


def text_report_body(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``dataset``, ``teacher`` and ``student`` of a finished text run's report.json."""
    m = manifests
    data = m["data"]
    t_sum = m["teacher"]["summary"]
    pruned = m["prune"].get("enabled", False)
    s_sum = m["prune"]["summary"] if pruned else m["distill"]["summary"]
    student_acc = m["prune"]["test_accuracy"] if pruned else m["distill"]["test_accuracy"]
    teacher_acc = m["teacher"]["test_accuracy"]
    export = m["export"]
    return {
        "dataset": {**{k: v for k, v in data.items()
                       if k in ("name", "source", "path", "rows", "streamed", "given_splits",
                                "limit", "train_limit", "eval_limit")},
                    "samples": {k: data[k] for k in ("train", "val", "test")},
                    "eval_samples": data["test"], "num_classes": len(data["classes"]),
                    "classes": data["classes"], "input_shape": None},
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
    }


def text_markdown(report: dict[str, Any]) -> str:
    """Text-specific lines appended to the common report.md."""
    t, s = report["teacher"], report["student"]
    lines = ["", "## Transformer sizes", "",
             "| model | layers | encoder params | MACs (seq 128) | test accuracy |",
             "|---|---:|---:|---:|---:|",
             f"| teacher | {t['layers']} | {t['encoder_params']:,} | {t['macs']:,} | "
             f"{pct(t['accuracy'])} |",
             f"| student | {s['layers']} (heads {s['heads']}, FFN {s['intermediate_size']}) | "
             f"{s['encoder_params']:,} | {s['macs']:,} | {pct(s['accuracy_fp32'])} |", "",
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
        return (f"| {name} | {pct(acc)} | {_fmt(size and size / 1e6, '.1f')} | "
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
