"""report.html: one self-contained file (tables + plots as base64 PNG) rendered from report.json.

Self-contained so it can be attached to a CI run or mailed without its directory. Plots use
matplotlib's Agg backend, imported lazily: matplotlib is the optional ``report`` extra, and a
machine without it still gets report.json/report.md (the HTML is skipped with a warning).
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgecompress.io import atomic_write_text

logger = logging.getLogger(__name__)

Samples = Mapping[str, Mapping[str, list[float]]]  # target -> {"student"|"teacher": [ms, ...]}

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}
.pass{color:#176f2c;font-weight:bold}.fail{color:#b00020;font-weight:bold}
.skip{color:#777}img{max-width:100%;border:1px solid #eee;margin:0.5em 0}"""


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _ran(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [t for t in report.get("targets") or [] if t.get("status") == "ok"]


def plot_accuracy_vs_latency(report: Mapping[str, Any]) -> str | None:
    """Accuracy vs p50 latency per target (filled) with the teacher on the same engine (hollow),
    joined by a line: up and to the left of the teacher is the goal."""
    import matplotlib.pyplot as plt

    points = [t for t in _ran(report) if t.get("accuracy") is not None]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, t in enumerate(points):
        color = f"C{i % 10}"
        x, y = t["latency_ms"]["p50"], 100 * t["accuracy"]
        ax.scatter([x], [y], color=color, s=60, zorder=3, label=f"{t['name']} (student)")
        tlat, tacc = (t.get("teacher_latency_ms") or {}).get("p50"), t.get("teacher_accuracy")
        if tlat is not None and tacc is not None:
            ax.scatter([tlat], [100 * tacc], facecolors="none", edgecolors=color, s=80,
                       linewidths=2, zorder=3, label=f"{t['name']} (teacher)")
            ax.plot([x, tlat], [y, 100 * tacc], color=color, linestyle=":", linewidth=1)
    teacher = report.get("teacher") or {}
    if teacher.get("accuracy") is not None:
        ax.axhline(100 * teacher["accuracy"], color="gray", linestyle="--", linewidth=1,
                   label="teacher (PyTorch)")
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency (ms, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs latency per target")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


def plot_sizes(report: Mapping[str, Any]) -> str | None:
    """Artifact size per target engine, with the teacher's engine next to it."""
    import matplotlib.pyplot as plt

    labels, sizes, colors = [], [], []
    for t in _ran(report):
        if t.get("size_bytes") is not None:
            labels.append(f"{t['name']}\nstudent")
            sizes.append(t["size_bytes"] / 1024)
            colors.append("C0")
        if t.get("teacher_size_bytes") is not None:
            labels.append(f"{t['name']}\nteacher")
            sizes.append(t["teacher_size_bytes"] / 1024)
            colors.append("C7")
    if not sizes:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6))
    bars = ax.bar(range(len(sizes)), sizes, color=colors)
    ax.bar_label(bars, labels=[f"{s:,.1f} KiB" for s in sizes], fontsize=8)
    ax.set_xticks(range(len(sizes)), labels, fontsize=8)
    ax.set_ylabel("artifact size (KiB)")
    ax.set_title("Size per artifact")
    ax.margins(y=0.15)
    return _png(fig)


def plot_latency_distribution(report: Mapping[str, Any], samples: Samples | None) -> str | None:
    """Box plots of the raw per-call latencies of every engine that was timed."""
    import matplotlib.pyplot as plt

    data, labels = [], []
    for t in _ran(report):
        per = (samples or {}).get(t["name"]) or {}
        for role in ("student", "teacher"):
            if per.get(role):
                data.append(per[role])
                labels.append(f"{t['name']} {role}")
    if not data:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(data) + 1.6))
    ax.boxplot(data, vert=False, whis=(1, 99), showfliers=True,
               flierprops={"markersize": 2, "alpha": 0.4})
    ax.set_yticks(range(1, len(data) + 1), labels, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("latency per call (ms, log scale); whiskers p1-p99")
    ax.set_title("Latency distribution per engine (raw samples)")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    return _png(fig)


def _cell(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    return html.escape(format(value, spec) if spec else str(value))


def _tables(report: Mapping[str, Any]) -> str:
    rows = []
    for t in report.get("targets") or []:
        if t.get("status") != "ok":
            rows.append(f"<tr><td>{_cell(t['name'])}</td><td colspan=10 class=skip>"
                        f"{_cell(t['status'])}: {_cell(t.get('reason'))}</td></tr>")
            continue
        lat, tlat = t["latency_ms"], t.get("teacher_latency_ms") or {}
        par = t.get("parity") or {}
        rows.append(
            "<tr>" + "".join(f"<td>{c}</td>" for c in (
                _cell(t["name"]), _cell(f"{t.get('backend')} {t.get('precision')}"),
                _cell(t.get("accuracy"), ".4f"), _cell(t.get("accuracy_drop"), ".2f"),
                _cell(lat.get("p50"), ".4f"), _cell(lat.get("p90"), ".4f"),
                _cell(tlat.get("p50"), ".4f"), _cell(t.get("speedup_vs_teacher"), ".2f")
                + (" (noisy)" if t.get("speedup_noisy") else ""),
                _cell(t.get("int8_speedup_vs_fp32"), ".2f"),
                _cell(t.get("size_bytes"), ",d"), _cell(par.get("snr_db"), ".1f"))) + "</tr>")
    head = ("<tr><th>target</th><th>engine</th><th>accuracy</th><th>drop (pp)</th>"
            "<th>p50 ms</th><th>p90 ms</th><th>teacher p50 ms</th><th>speedup</th>"
            "<th>int8/fp32</th>"
            "<th>size (B)</th><th>SNR dB</th></tr>")
    gate = report.get("gate") or {}
    verdict = ("<p class=pass>GATE PASSED</p>" if gate.get("passed")
               else "<p class=fail>GATE FAILED</p>")
    checks = "".join(
        f"<tr><td>{_cell(c['target'])}</td><td>{_cell(c['check'])}</td>"
        f"<td class={ {'passed': 'pass', 'failed': 'fail'}.get(c['outcome'], 'skip') }>"
        f"{_cell(c['outcome'])}</td><td>{_cell(c['message'])}</td></tr>"
        for c in gate.get("checks") or [])
    return (f"<h2>Targets</h2><table>{head}{''.join(rows)}</table><h2>Gate</h2>{verdict}"
            f"<table><tr><th>target</th><th>check</th><th>outcome</th><th>detail</th></tr>"
            f"{checks}</table>")


def _distillation_html(report: Mapping[str, Any]) -> str:
    """Which student the distill stage carried forward, and the settings search if any."""
    from edgecompress.report import distillation_sentence

    block = report.get("distillation")
    if not block:
        return ""
    text = html.escape(distillation_sentence(dict(block))).replace("**", "")
    search = block.get("search") or {}
    rows = "".join(
        f"<tr><td>{_cell(c['loss'])}</td><td>{_cell(c['temperature'], 'g')}</td>"
        f"<td>{_cell(c['alpha'], 'g')}</td><td>{_cell(c['val_accuracy'], '.4f')}</td></tr>"
        for c in search.get("candidates") or [])
    table = (f"<p>Settings searched on the validation split "
             f"({_cell(search.get('epochs_per_candidate'))} epochs per candidate):</p><table>"
             f"<tr><th>loss</th><th>T</th><th>alpha</th><th>val accuracy</th></tr>{rows}</table>"
             if rows else "")
    return f"<h2>Distillation</h2><p>{text}</p>{table}"


def render_html(report: Mapping[str, Any], samples: Samples | None = None) -> str:
    """The whole HTML document (raises ImportError without matplotlib)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    env = report.get("environment") or {}
    cpu = env.get("cpu") or {}
    dataset = report.get("dataset") or {}
    title = html.escape(str((report.get("recipe") or {}).get("name", "")))
    plots = [("Accuracy vs p50 latency", plot_accuracy_vs_latency(report)),
             ("Size per artifact", plot_sizes(report)),
             ("Latency distribution", plot_latency_distribution(report, samples))]
    figures = "".join(
        f"<h3>{name}</h3><img alt='{name}' src='data:image/png;base64,{png}'>"
        if png else f"<h3>{name}</h3><p class=skip>no data for this plot</p>"
        for name, png in plots)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>edgecompress report: {title}</title><style>{_CSS}</style></head><body>"
            f"<h1>edgecompress report: {title}</h1>"
            f"<p>Dataset: {_cell(dataset.get('name'))} ({_cell(dataset.get('eval_samples'))} "
            f"test samples). CPU: {_cell(cpu.get('model'))}, flags "
            f"{_cell(', '.join(cpu.get('flags') or []))}. Python {_cell(env.get('python'))}."
            f" Latencies are comparable within this report only.</p>"
            f"{_distillation_html(report)}{_tables(report)}<h2>Plots</h2>{figures}"
            f"</body></html>\n")


def write_html_report(report: Mapping[str, Any], path: str | Path,
                      samples: Samples | None = None) -> Path | None:
    """Write report.html atomically; ``None`` (and a warning) when matplotlib is missing."""
    try:
        document = render_html(report, samples)
    except ImportError as err:
        logger.warning("report.html skipped: matplotlib is not installed (%s); install it with: "
                       "pip install 'edgecompress[report]'", err)
        return None
    atomic_write_text(path, document)
    return Path(path)


def samples_from_results(results: Mapping[str, Any]) -> dict[str, dict[str, list[float]]]:
    """Raw latency samples per target and role from a ``bench/results.json`` document."""
    out: dict[str, dict[str, list[float]]] = {}
    for t in results.get("targets") or []:
        raw = t.get("samples_ms") or {}
        if raw:
            out[t["name"]] = {k: list(v) for k, v in raw.items() if v}
    return out
