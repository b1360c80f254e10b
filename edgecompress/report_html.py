"""report.html: one self-contained file (tables + plots as base64 PNG) rendered from report.json.

Self-contained so it can be attached to a CI run or mailed without its directory. Plots use
matplotlib's Agg backend, imported lazily: matplotlib is the optional ``report`` extra, and a
machine without it still gets report.json/report.md (the HTML is skipped with a warning).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgecompress.io import atomic_write_text
from edgecompress.report_plots import (  # noqa: F401 - re-exported
    Samples,
    plot_accuracy_vs_latency,
    plot_latency_distribution,
    plot_sizes,
)
from edgecompress.report_sections import (
    HEADINGS,
    distillation_html,
    environment_html,
    esc,
    kib,
    pct,
    story_html,
    table,
    td,
)

logger = logging.getLogger(__name__)

_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;
color:#222;line-height:1.4}
table{border-collapse:collapse;margin:0.8em 0;font-size:14px}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top;
white-space:nowrap}th{background:#f4f4f4;white-space:normal}td.n{text-align:right}td.w{white-space:normal;
min-width:20em}td .small{white-space:normal}
.pass{color:#176f2c;font-weight:bold}.fail{color:#b00020;font-weight:bold}
.skip{color:#777}.small{font-size:12px;color:#555}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}
section{margin-bottom:1.5em}nav a{margin-right:0.8em}"""

#: Headings of the sections every page has (the story sections are in report_sections).
PAGE_HEADINGS = {"targets": "Targets", "gate": "Gate", "plots": "Plots"}

_distillation_html = distillation_html  # the name tests/test_distill_select.py imports


def _num(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else esc(value)


def _fixed(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _targets_html(report: Mapping[str, Any]) -> str:
    rows = []
    for t in report.get("targets") or []:
        if t.get("status") != "ok":
            rows.append(f"<tr><td>{esc(t.get('name'))}</td><td colspan=10 class=skip>"
                        f"{esc(t.get('status'))}: {esc(t.get('reason'))}</td></tr>")
            continue
        lat, tlat = t.get("latency_ms") or {}, t.get("teacher_latency_ms") or {}
        par = t.get("parity") or {}
        name = esc(t.get("name")) + (f"<br><span class=small>{esc(t['note'])}</span>"
                                     if t.get("note") else "")
        rows.append("<tr>" + "".join(td(c) for c in (
            name, f"{esc(t.get('backend'))} {esc(t.get('precision'))}",
            pct(t.get("accuracy")), _fixed(t.get("accuracy_drop"), ".2f"),
            _fixed(lat.get("p50"), ".3f"), _fixed(lat.get("p90"), ".3f"),
            _fixed(tlat.get("p50"), ".3f"),
            _fixed(t.get("speedup_vs_teacher"), ".2f")
            + ("x (noisy)" if t.get("speedup_noisy") else
               "x" if t.get("speedup_vs_teacher") is not None else ""),
            _fixed(t.get("int8_speedup_vs_fp32"), ".2f")
            + ("x" if t.get("int8_speedup_vs_fp32") is not None else ""),
            kib(t.get("size_bytes")), _fixed(par.get("snr_db"), ".1f"))) + "</tr>")
    head = ("<tr><th>target</th><th>engine</th><th>test accuracy</th><th>drop vs teacher (pp)"
            "</th><th>p50 ms</th><th>p90 ms</th><th>teacher p50 ms</th><th>speedup</th>"
            "<th>int8/fp32</th><th>size</th><th>SNR dB</th></tr>")
    return (f"<section id='targets'><h2>{PAGE_HEADINGS['targets']}</h2>"
            f"<table>{head}{''.join(rows)}</table></section>")


def _gate_html(report: Mapping[str, Any]) -> str:
    gate = report.get("gate") or {}
    verdict = ("<p class=pass>GATE PASSED</p>" if gate.get("passed")
               else "<p class=fail>GATE FAILED</p>")
    rows = [[esc(c.get("target")), esc(c.get("check")),
             f"<span class={ {'passed': 'pass', 'failed': 'fail'}.get(c.get('outcome'), 'skip') }>"
             f"{esc(c.get('outcome'))}</span>", _num(c.get("value")), _num(c.get("limit")),
             esc(c.get("message"))]
            for c in gate.get("checks") or []]
    return (f"<section id='gate'><h2>{PAGE_HEADINGS['gate']}</h2>{verdict}"
            + table(["target", "check", "outcome", "value", "limit", "detail"], rows)
            + "</section>")


def _summary_html(report: Mapping[str, Any]) -> str:
    dataset = report.get("dataset") or {}
    cpu = (report.get("environment") or {}).get("cpu") or {}
    task = report.get("task")
    data = (f"Dataset {esc(dataset.get('name'))} ({esc(dataset.get('eval_samples'))} test "
            "samples)" if dataset.get("name") else "No dataset: latency on synthetic inputs only")
    return (f"<p>{'Task ' + esc(task) + '. ' if task else ''}{data}. CPU: {esc(cpu.get('model'))}"
            f"{' (' + esc(cpu.get('isa')) + ')' if cpu.get('isa') else ''}. Accuracy is test "
            "accuracy in percent; differences in percentage points (pp).</p>")


def render_html(report: Mapping[str, Any], samples: Samples | None = None) -> str:
    """The whole HTML document (raises ImportError without matplotlib)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    title = esc((report.get("recipe") or {}).get("name", ""))
    plots = [("Accuracy vs p50 latency", plot_accuracy_vs_latency(report)),
             ("Size per artifact", plot_sizes(report)),
             ("Latency distribution", plot_latency_distribution(report, samples))]
    figures = "".join(
        f"<h3>{name}</h3><img alt='{name}' src='data:image/png;base64,{png}'>"
        if png else f"<h3>{name}</h3><p class=skip>no data for this plot</p>"
        for name, png in plots)
    story = story_html(report)
    environment = environment_html(report)
    links = [(key, h) for key, h in HEADINGS.items() if f"<section id='{key}'>" in story]
    links += list(PAGE_HEADINGS.items()) + ([("environment", HEADINGS["environment"])]
                                            if environment else [])
    nav = " ".join(f"<a href='#{key}'>{esc(h)}</a>" for key, h in links)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>edgecompress report: {title}</title><style>{_CSS}</style></head><body>"
            f"<h1>edgecompress report: {title}</h1>{_summary_html(report)}"
            f"<nav class=small>{nav}</nav>{story}{_targets_html(report)}{_gate_html(report)}"
            f"<section id='plots'><h2>{PAGE_HEADINGS['plots']}</h2>{figures}</section>{environment}"
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
