"""The story sections of report.html, rendered from :mod:`edgecompress.report_story` rows.

Each function returns one ``<section>`` (an ``<h2>`` and its tables) or ``""`` when the report
holds nothing for it. Accuracy is a percentage with one decimal everywhere (``98.6 %``),
differences in percentage points with two (``-0.28 pp``), sizes in KiB.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping
from typing import Any

from edgecompress import report_story as story

#: Section headings, in page order (the Chromium test looks for each).
HEADINGS = {"ladder": "Model ladder", "distillation": "Distillation",
            "pruning": "Pruning plan", "quantization": "Quantization: QAT vs PTQ",
            "fallbacks": "Sensitivity and FP32 fallbacks", "census": "INT8 kernel census",
            "environment": "Environment"}


def esc(value: Any) -> str:
    """HTML-escaped text, ``-`` for ``None``."""
    return "-" if value is None else html.escape(str(value))


def pct(fraction: Any) -> str:
    """An accuracy fraction as a percentage: ``0.9861`` -> ``98.6 %``."""
    return "-" if fraction is None else f"{100 * fraction:.1f} %"


def pp(value: Any, sign: bool = True) -> str:
    """Percentage points: ``-0.28 pp``."""
    if value is None:
        return "-"
    return f"{round(value, 2) + 0.0:{'+' if sign else ''}.2f} pp"  # + 0.0: no "-0.00"


def count(value: Any) -> str:
    return "-" if value is None else f"{value:,}"


def kib(size_bytes: Any) -> str:
    """A size in KiB, or MiB from 10 MiB up."""
    if size_bytes is None:
        return "-"
    if size_bytes >= 10 * 2**20:
        return f"{size_bytes / 2**20:,.1f} MiB"
    return f"{size_bytes / 1024:,.1f} KiB"


_NUMERIC = re.compile(r"^(<b>)?[-+]?[\d.,]+(x| ?%| pp| KiB| MiB| GHz)?(</b>)?( \(.*\))?$")


def td(cell: str, numeric: bool = True) -> str:
    """A cell: numbers right-aligned (class n), text left-aligned and wrapping when long."""
    if numeric and (_NUMERIC.match(cell) or cell == "-"):
        return f"<td class=n>{cell}</td>"
    return f"<td class=w>{cell}</td>" if len(cell) > 48 else f"<td>{cell}</td>"


def table(head: Iterable[str], rows: Iterable[Iterable[str]], numeric: bool = True) -> str:
    """A table from already-escaped cells (``numeric=False``: every cell left-aligned)."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(td(c, numeric) for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _section(key: str, body: str) -> str:
    return f"<section id='{key}'><h2>{HEADINGS[key]}</h2>{body}</section>"


def ladder_html(report: Mapping[str, Any]) -> str:
    """teacher -> distilled -> pruned -> int8: params, MACs, size, accuracy at each step."""
    rows = story.model_ladder(report)
    if not rows:
        return ""
    teacher = rows[0]
    cells = []
    for r in rows:
        ratio = (f"1/{teacher['params'] / r['params']:.1f}" if r is not teacher and
                 teacher.get("params") and r.get("params") else "")
        size = ("not exported" if r["size_bytes"] is None else
                kib(r["size_bytes"]) + (f" ({esc(r['size_what'])})" if r.get("size_what") else ""))
        drop = (None if r is teacher or r["accuracy"] is None or teacher["accuracy"] is None
                else 100 * (r["accuracy"] - teacher["accuracy"]))
        cells.append([esc(r["model"]), count(r["params"]) + (f" ({ratio})" if ratio else ""),
                      count(r["macs"]), size,
                      pct(r["accuracy"]) + (f" ({esc(r['accuracy_what'])})"
                                            if r.get("accuracy_what") else ""),
                      pp(drop) if drop is not None else ""])
    note = ("<p>Test split throughout. The int8 rows are the deployed engines (their own "
            "accuracy on the test split); params and MACs do not change with precision.</p>")
    return _section("ladder", table(["step", "params", "MACs (batch 1)", "size", "test accuracy",
                                     "vs teacher"], cells) + note)


def distillation_html(report: Mapping[str, Any]) -> str:
    """The distillation gain over the hard-label baseline and which student went on."""
    s = story.distillation_story(report)
    if s is None:
        return ""
    parts = []
    if s["gain_pp"] is not None:
        kept = {"distilled": "the distilled student",
                "baseline": "the hard-label student (distillation did not pay on validation)"}
        parts.append(f"<p><b>Distillation gain over the hard-label baseline: {pp(s['gain_pp'])}"
                     f"</b> on the test split (distilled {pct(s['distilled_accuracy'])} vs "
                     f"hard labels only {pct(s['baseline_accuracy'])}"
                     + (f"; validation {pp(s['val_gain_pp'])}" if s["val_gain_pp"] is not None
                        else "") + ").</p>")
        if s["kept"]:
            parts.append(f"<p>Carried forward: {kept.get(s['kept'], esc(s['kept']))}.</p>")
    else:
        parts.append(f"<p>Distilled student: {pct(s['distilled_accuracy'])} on the test split. "
                     "Distillation gain: not measured (no hard-label baseline ran).</p>")
    if s["setting"]:
        parts.append("<p>Settings: " + ", ".join(f"{esc(k)} {esc(v)}"
                                                  for k, v in s["setting"].items()) + ".</p>")
    if s["kept_layers"] is not None:
        pairs = ", ".join(f"student {a} &larr; teacher {b}" for a, b in s["layer_map"] or [])
        parts.append(f"<p>Teacher layers kept in the student: {esc(s['kept_layers'])}"
                     + (f" ({pairs})" if pairs else "") + ".</p>")
    search = s["search"] or {}
    chosen = search.get("chosen") or {}
    keys = ("loss", "temperature", "alpha")
    rows = [[esc(c.get("loss")), esc(c.get("temperature")), esc(c.get("alpha")),
             pct(c.get("val_accuracy")),
             "chosen" if chosen and all(c.get(k) == chosen.get(k) for k in keys) else ""]
            for c in search.get("candidates") or []]
    if rows:
        parts.append(f"<p>Settings searched on the validation split "
                     f"({esc(search.get('epochs_per_candidate'))} epochs per candidate):</p>"
                     + table(["loss", "T", "alpha", "val accuracy", ""], rows))
    return _section("distillation", "".join(parts))


def pruning_html(report: Mapping[str, Any]) -> str:
    """Channels or heads kept per group, the plan, and what it cost in accuracy."""
    plan = story.pruning_plan(report)
    if plan is None:
        return ""

    def ratio(a: Any, b: Any) -> str:
        return f" ({100 * b / a:.0f} % kept)" if a and b is not None else ""

    facts = [f"plan {esc(plan['plan'])}" if plan["plan"] else "",
             f"importance {esc(plan['importance'])}" if plan["importance"] else "",
             f"round to {esc(plan['round_to'])}" if plan["round_to"] else ""]
    text = (f"<p>Params {count(plan['params_before'])} &rarr; {count(plan['params_after'])}"
            f"{ratio(plan['params_before'], plan['params_after'])}, MACs "
            f"{count(plan['macs_before'])} &rarr; {count(plan['macs_after'])}"
            f"{ratio(plan['macs_before'], plan['macs_after'])}"
            + (f"; {', '.join(f for f in facts if f)}" if any(facts) else "") + ". Test "
            f"accuracy {pct(plan['accuracy_before'])} before"
            + (f", {pct(plan['accuracy_pruned'])} right after pruning"
               if plan["accuracy_pruned"] is not None else "")
            + f", {pct(plan['accuracy_after'])} after recovery.</p>")
    groups = plan["groups"]
    changed = [g for g in groups if g["before"] != g["after"]]
    body = text
    if groups:
        body += (f"<p>{len(changed)} of {len(groups)} groups thinned"
                 + (" (unchanged groups not listed)" if len(changed) < len(groups) else "")
                 + ".</p>")
        body += table(["group", "unit", "before", "kept", "kept %"],
                      [[esc(g["group"]), esc(g["unit"]), count(g["before"]), count(g["after"]),
                        f"{100 * g['after'] / g['before']:.0f} %" if g["before"] else "-"]
                       for g in changed or groups])
    if plan["steps"]:
        body += "<p>Iterative steps (prune, then recover):</p>" + table(
            ["step", "MACs goal", "MACs kept", "accuracy pruned", "after recovery"],
            [[esc(st.get("step")), pct(st.get("goal")).replace(".0 %", " %"),
              pct(st.get("macs_ratio")).replace(".0 %", " %"),
              pct(st.get("test_accuracy_pruned")), pct(st.get("test_accuracy_recovered"))]
             for st in plan["steps"]])
    return _section("pruning", body)


def quantization_html(report: Mapping[str, Any]) -> str:
    """Per preset: QAT or PTQ, the validation accuracies behind the choice, int8 vs FP32."""
    rows = story.quantization_choices(report)
    if not rows:
        return ""
    cells = []
    for r in rows:
        if r["status"] != "ok":
            cells.append([esc(r["preset"]), f"{esc(r['status'])}: {esc(r['reason'])}", "", "",
                          "", "", ""])
            continue
        if r["qat_val_accuracy"] is not None or r["ptq_val_accuracy"] is not None:
            why = (f"val: QAT {pct(r['qat_val_accuracy'])}, PTQ {pct(r['ptq_val_accuracy'])}"
                   + (f" ({esc(r['ptq_calibration'])} calibration)" if r["ptq_calibration"]
                      else ""))
        else:
            why = f"{esc(r['mode'])} only (no comparison ran)"
        cells.append([esc(r["preset"]), f"<b>{esc(str(r['kept']).upper())}</b>", why,
                      esc(", ".join(map(str, r["targets"]))), pct(r["fp32_accuracy"]),
                      pct(r["int8_accuracy"]),
                      pp(-r["drop_pp"]) if r["drop_pp"] is not None else "-"])
    rationale = "".join(f"<li><b>{esc(r['preset'])}</b>: {esc(r['rationale'])}</li>"
                        for r in rows if r.get("rationale"))
    return _section("quantization", table(
        ["preset", "kept", "why", "targets", "FP32 test", "int8 test", "int8 vs FP32"], cells)
        + (f"<ul class=small>{rationale}</ul>" if rationale else ""))


def fallbacks_html(report: Mapping[str, Any], top: int = 10) -> str:
    """Layer sensitivity (most sensitive first), and every layer left in FP32 and why."""
    rows = story.fallbacks(report)
    if not rows:
        return ""
    body = table(["where", "layers left in FP32", "int8 layers"],
                 [[esc(r["where"]), esc(", ".join(r["fp32_layers"])) or "none",
                   count(r["layers_quantized"])] for r in rows])
    for r in rows:
        crit = r["criterion"] or {}
        if crit.get("attempts"):
            body += (f"<p>{esc(r['where'])}: accuracy criterion (max drop "
                     f"{pp(crit.get('max_accuracy_drop'), sign=False)} on validation) "
                     f"{'met' if crit.get('met') else '<b>not met</b>'}:</p>" + table(
                         ["attempt", "FP32 layers", "val accuracy", "val drop"],
                         [[str(i + 1), esc(", ".join(a.get("fp32_layers") or [])) or "none",
                           pct(a.get("val_accuracy")),
                           pp(a.get("val_drop_vs_fp32_pp"), sign=False)]
                          for i, a in enumerate(crit["attempts"])]))
        if r["sensitivity"]:
            shown = r["sensitivity"][:top]
            body += (f"<p>{esc(r['where'])}: layer sensitivity (one layer int8 at a time, "
                     f"validation split), most sensitive first"
                     + (f", top {top} of {len(r['sensitivity'])}"
                        if len(r["sensitivity"]) > top else "") + ":</p>" + table(
                         ["layer", "accuracy", "drop", "logit MSE"],
                         [[esc(e.get("layer")), pct(e.get("accuracy")),
                           pp(e.get("accuracy_drop_pp"), sign=False),
                           "-" if e.get("logit_mse") is None else f"{e['logit_mse']:.3g}"]
                          for e in shown]))
    if not any(r["sensitivity"] for r in rows):
        body += "<p class=skip>No layer sensitivity analysis in this run.</p>"
    return _section("fallbacks", body)


def census_html(report: Mapping[str, Any]) -> str:
    """Ops x int8 engines: how many kernels of each op each engine runs in int8."""
    census = story.kernel_census(report)
    if census is None:
        return ""
    names = list(census["engines"])
    rows = [[esc(op)] + [count(census["engines"][n]["kernels"].get(op)) for n in names]
            for op in census["ops"]]
    rows.append(["<b>total</b>"] + [f"<b>{sum(census['engines'][n]['kernels'].values()):,}</b>"
                                    for n in names])
    rows.append(["float conv/linear nodes"]
                + [esc(", ".join(census["engines"][n]["fp32_nodes"])) or "none" for n in names])
    if any(e["fully_integer"] is not None for e in census["engines"].values()):
        rows.append(["fully integer"] + [
            {True: "yes", False: "no", None: "-"}[census["engines"][n]["fully_integer"]]
            for n in names])
    head = ["op"] + [f"{esc(n)}<br><span class=small>{esc(census['engines'][n]['backend'])}"
                     f"</span>" for n in names]
    return _section("census", "<p>Kernels counted in each engine's optimized graph (TFLite: "
                    "every op of the int8 model).</p>" + table(head, rows))


def environment_html(report: Mapping[str, Any]) -> str:
    """Where it ran: CPU model and ISA, threads, Python and library versions."""
    env = story.environment_summary(report)
    if env is None:
        return ""
    facts = [("CPU", env["cpu_model"]), ("machine", env["machine"]), ("ISA class", env["isa"]),
             ("ISA flags", ", ".join(env["flags"]) or None),
             ("logical cores", env["logical_cores"]),
             ("clock", None if env["clock_ghz"] is None else f"{env['clock_ghz']:g} GHz"),
             ("torch threads", env["threads"]), ("Python", env["python"])]
    facts += sorted(env["packages"].items())
    rows = [[esc(k), esc(v)] for k, v in facts]
    return _section("environment", table(["", "value"], rows, numeric=False)
                    + "<p class=small>Latencies are comparable within this report only.</p>")


def story_html(report: Mapping[str, Any]) -> str:
    """Every story section that has data, in page order (environment excluded: it goes last)."""
    return "".join(fn(report) for fn in (ladder_html, distillation_html, pruning_html,
                                         quantization_html, fallbacks_html, census_html))
