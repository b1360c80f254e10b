"""Speed figures of a target entry from interleaved timing: same-round speedups, the int8/FP32
ratio of one student on one engine, and achieved GMAC/s against the CPU's int8 peak.

Every ratio here is the median of per-round ratios (both engines timed in the same rounds), so a
neighbour's load that comes and goes during the benchmark moves both sides of each pair; a ratio
whose rounds still disagree is flagged ``noisy`` with its spread, instead of being trusted.
"""

from __future__ import annotations

import logging
from typing import Any

from edgecompress.bench.latency import InterleavedResult

logger = logging.getLogger(__name__)


def speed_fields(result: InterleavedResult, *, student: str, teacher: str | None = None,
                 fp32_twin: str | None = None) -> dict[str, Any]:
    """The report fields of one target from the engines' names in ``result``.

    Returns:
        ``speedup_vs_teacher`` (teacher / student, median of same-round ratios),
        ``speedup_noisy``, ``speedup_spread`` and ``speedup_vs_teacher_cpu`` (same on CPU time)
        when a teacher was timed; with ``fp32_twin`` also ``fp32_latency_ms``,
        ``int8_speedup_vs_fp32`` (twin / student), ``int8_speedup_noisy``,
        ``int8_speedup_spread``, ``int8_speedup_vs_fp32_cpu`` and, when the int8 engine is not
        faster, ``int8_not_faster: true`` plus a line in ``notes``.
    """
    out: dict[str, Any] = {"timing": result.schedule()}
    if teacher is not None:
        pair = result.paired_ratio(teacher, student)
        cpu = result.paired_ratio(teacher, student, cpu=True)
        out.update(speedup_vs_teacher=pair["ratio"] if pair else None,
                   speedup_noisy=bool(pair and pair["noisy"]),
                   speedup_spread=pair["spread"] if pair else None,
                   speedup_vs_teacher_cpu=cpu["ratio"] if cpu else None)
    if fp32_twin is not None and fp32_twin != student:
        pair = result.paired_ratio(fp32_twin, student)
        cpu = result.paired_ratio(fp32_twin, student, cpu=True)
        ratio = pair["ratio"] if pair else None
        out.update(fp32_latency_ms=result.stats[fp32_twin].to_dict(),
                   int8_speedup_vs_fp32=ratio,
                   int8_speedup_noisy=bool(pair and pair["noisy"]),
                   int8_speedup_spread=pair["spread"] if pair else None,
                   int8_speedup_vs_fp32_cpu=cpu["ratio"] if cpu else None)
        if ratio is not None and ratio <= 1.0:
            out["int8_not_faster"] = True
            out["notes"] = [
                f"int8 engine is not faster than the FP32 engine of the same student on the "
                f"same runtime ({ratio:.2f}x, median of {pair['rounds']} same-round ratios"
                f"{', noisy' if pair['noisy'] else ''})"]
    return out


def _cpu_info() -> Any:
    """:func:`edgecompress.isa.cpu_info`, or None where that module is missing or fails."""
    try:
        from edgecompress.isa import cpu_info
    except ImportError:  # an older checkout without ISA detection: no peak figures
        return None
    try:
        return cpu_info()
    except OSError as err:
        logger.warning("CPU detection failed (%s): no peak figures", err)
        return None


def throughput_fields(macs: int | None, p50_ms: float | None, *, batch_size: int = 1,
                      threads: int = 1, precision: str = "int8",
                      remote: bool = False) -> dict[str, Any]:
    """Achieved GMAC/s of an engine and its fraction of this CPU's peak for ``precision``.

    ``macs`` counts one sample (the student's forward pass); a call processes ``batch_size``.
    The peak is ``MACs/cycle/core of the ISA x clock x threads``: the formula and the clock's
    source are stated next to it, because a VM's reported clock may be the base clock, which
    makes the fraction an estimate. A remote target ran on another CPU: no peak is claimed.

    Returns:
        ``{"throughput": {"macs_per_call", "gmacs_per_s", "peak", "peak_fraction"}}``, or ``{}``
        without MACs or latency.
    """
    if not macs or not p50_ms or p50_ms <= 0:
        return {}
    gmacs = macs * batch_size / (p50_ms / 1e3) / 1e9
    out: dict[str, Any] = {"macs_per_call": int(macs * batch_size),
                           "gmacs_per_s": round(gmacs, 4), "precision": precision,
                           "peak": None, "peak_fraction": None}
    info = None if remote else _cpu_info()
    if info is not None:
        per_cycle = (info.int8_peak_macs_per_cycle if precision == "int8"
                     else info.fp32_peak_macs_per_cycle)
        clock = info.clock_ghz
        threads = max(1, threads)
        peak = per_cycle * clock * threads if clock else None
        out["peak"] = {
            "isa": info.isa, "macs_per_cycle": per_cycle, "clock_ghz": clock,
            "clock_source": info.clock_source, "threads": threads,
            "gmacs_per_s": round(peak, 3) if peak else None,
            "formula": (f"{per_cycle} {precision} MAC/cycle/core ({info.isa}) x "
                        f"{clock if clock else '?'} GHz x {threads} thread(s)"),
        }
        out["peak_fraction"] = round(gmacs / peak, 5) if peak else None
    return {"throughput": out}


def _x(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}x"


def speed_markdown(report: dict[str, Any]) -> list[str]:
    """The report.md section on how the targets were timed: same-round speedups with their
    spread and noise flag, int8 vs the FP32 twin, CPU time, GMAC/s and % of peak, notes."""
    ran = [t for t in report.get("targets") or [] if t.get("status") == "ok"
           and (t.get("timing") or {}).get("scheme") == "interleaved"]
    if not ran:
        return []
    rounds = ran[0]["timing"].get("rounds")
    lines = ["", "### Speed (interleaved rounds)", "",
             f"Engines timed in {rounds} interleaved rounds (A B C, B C A, ...); each speedup is "
             "the median of same-round ratios, *noisy* when the middle half of the rounds "
             "disagree by more than "
             f"{100 * ran[0]['timing'].get('noise_threshold_rel_iqr', 0.1):.0f} %.", "",
             "| target | speedup vs teacher | rounds min-max | int8/fp32 | fp32 p50 ms | "
             "cpu p50 ms | GMAC/s | % of peak |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    formulas = []
    for t in ran:
        spread = t.get("speedup_spread") or {}
        lat, fp32 = t.get("latency_ms") or {}, t.get("fp32_latency_ms") or {}
        tp = t.get("throughput") or {}
        peak = tp.get("peak") or {}
        noisy = " (noisy)" if t.get("speedup_noisy") else ""
        int8 = _x(t.get("int8_speedup_vs_fp32")) + (" (noisy)" if t.get("int8_speedup_noisy")
                                                   else "")
        frac = tp.get("peak_fraction")
        lines.append(
            f"| {t['name']} | {_x(t.get('speedup_vs_teacher'))}{noisy} | "
            f"{_x(spread.get('min'))}-{_x(spread.get('max'))} | "
            f"{int8 if t.get('int8_speedup_vs_fp32') is not None else '-'} | "
            f"{'-' if fp32.get('p50') is None else format(fp32['p50'], '.4f')} | "
            f"{'-' if lat.get('cpu_p50') is None else format(lat['cpu_p50'], '.4f')} | "
            f"{'-' if tp.get('gmacs_per_s') is None else format(tp['gmacs_per_s'], '.2f')} | "
            f"{'-' if frac is None else format(100 * frac, '.1f')} |")
        if peak.get("formula"):
            formula = (f"Peak ({t.get('precision')}): {peak['formula']} = "
                       f"{peak.get('gmacs_per_s')} GMAC/s (clock: {peak.get('clock_source')}).")
            if formula not in formulas:
                formulas.append(formula)
    if formulas:
        lines += ["", *formulas]
    notes = [f"- {t['name']}: {n}" for t in ran for n in t.get("notes") or []]
    if notes:
        lines += ["", "**Notes**", "", *notes]
    return lines
