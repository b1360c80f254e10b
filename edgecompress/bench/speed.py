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
