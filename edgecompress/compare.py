"""Compare two reports target by target, for tracking a model across commits.

Accuracy deltas are in percentage points, latency deltas in percent of the old p50/p90. A
regression is accuracy lower by more than the tolerance, latency higher by more than the
tolerance, a target that ran before and no longer does, or one that disappeared. Latencies from
different machines are not comparable: a CPU mismatch is reported as a warning next to the table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Comparison:
    """Per-target deltas and the regressions beyond tolerance."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def regressed(self) -> bool:
        """Whether any regression beyond tolerance was found."""
        return bool(self.regressions)


def _pct(old: float | None, new: float | None) -> float | None:
    if old is None or new is None or old <= 0:
        return None
    return 100.0 * (new / old - 1.0)


def _lat(entry: Mapping[str, Any], key: str) -> float | None:
    return (entry.get("latency_ms") or {}).get(key)


def compare_reports(old: Mapping[str, Any], new: Mapping[str, Any], *,
                    accuracy_tolerance_pp: float = 0.5,
                    latency_tolerance_pct: float = 10.0) -> Comparison:
    """Deltas of every target present in either report, and the regressions among them."""
    result = Comparison()
    old_cpu = ((old.get("environment") or {}).get("cpu") or {}).get("model")
    new_cpu = ((new.get("environment") or {}).get("cpu") or {}).get("model")
    if old_cpu and new_cpu and old_cpu != new_cpu:
        result.warnings.append(f"reports come from different CPUs ({old_cpu!r} vs {new_cpu!r}): "
                               "latency deltas are not meaningful")
    olds = {t["name"]: t for t in old.get("targets") or []}
    news = {t["name"]: t for t in new.get("targets") or []}
    for name in list(olds) + [n for n in news if n not in olds]:
        o, n = olds.get(name), news.get(name)
        if n is None:
            result.regressions.append(f"{name}: target missing from the new report")
            result.rows.append({"name": name, "status": "removed"})
            continue
        if o is None:
            result.rows.append({"name": name, "status": f"new ({n.get('status')})"})
            continue
        if o.get("status") == "ok" and n.get("status") != "ok":
            result.regressions.append(f"{name}: ran before, now {n.get('status')}: "
                                      f"{n.get('reason', '')}")
        row: dict[str, Any] = {"name": name, "status": f"{o.get('status')} -> {n.get('status')}"}
        if o.get("accuracy") is not None and n.get("accuracy") is not None:
            row["accuracy_delta_pp"] = 100.0 * (n["accuracy"] - o["accuracy"])
            if row["accuracy_delta_pp"] < -accuracy_tolerance_pp:
                result.regressions.append(
                    f"{name}: accuracy {100 * o['accuracy']:.2f} % -> {100 * n['accuracy']:.2f} % "
                    f"({row['accuracy_delta_pp']:+.2f} pp, tolerance {accuracy_tolerance_pp} pp)")
        for key in ("p50", "p90"):
            delta = _pct(_lat(o, key), _lat(n, key))
            row[f"{key}_delta_pct"] = delta
            if delta is not None and delta > latency_tolerance_pct:
                result.regressions.append(
                    f"{name}: {key} latency {_lat(o, key):.4f} ms -> {_lat(n, key):.4f} ms "
                    f"({delta:+.1f} %, tolerance {latency_tolerance_pct} %)")
        if o.get("size_bytes") is not None and n.get("size_bytes") is not None:
            row["size_delta_bytes"] = n["size_bytes"] - o["size_bytes"]
        if o.get("speedup_vs_teacher") and n.get("speedup_vs_teacher"):
            row["speedup_delta"] = n["speedup_vs_teacher"] - o["speedup_vs_teacher"]
        result.rows.append(row)
    return result


def format_comparison(result: Comparison) -> str:
    """A fixed-width table of the deltas followed by the regressions (for the console)."""
    def f(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lines = [f"{'target':<20}{'status':<16}{'acc (pp)':>10}{'p50 (%)':>10}{'p90 (%)':>10}"
             f"{'size (B)':>12}{'speedup':>9}"]
    for r in result.rows:
        acc, size = f(r.get("accuracy_delta_pp"), "+.2f"), f(r.get("size_delta_bytes"), "+,d")
        p50, p90 = f(r.get("p50_delta_pct"), "+.1f"), f(r.get("p90_delta_pct"), "+.1f")
        lines.append(f"{r['name']:<20}{r['status']:<16}{acc:>10}{p50:>10}{p90:>10}{size:>12}"
                     f"{f(r.get('speedup_delta'), '+.2f'):>9}")
    lines += [f"warning: {w}" for w in result.warnings]
    if result.regressions:
        lines.append("REGRESSION:")
        lines += [f"  {m}" for m in result.regressions]
    else:
        lines.append("no regression beyond tolerance")
    return "\n".join(lines)
