"""The gate: judge a report's targets against thresholds, listing every check and violation.

Thresholds come from three places, later ones winning per field: the recipe's ``gate`` (every
target), a target's own ``gate`` (incl. a profile's ``budgets``), and command-line overrides of
``edgecompress gate`` (every target again). The verdict is data (``checks``) so that the same
result renders as report text, console lines and JUnit testcases.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

logger = logging.getLogger(__name__)

#: Threshold field -> (check name, unit) in the order checks are listed.
THRESHOLDS: dict[str, tuple[str, str]] = {
    "max_accuracy_drop": ("accuracy_drop", "pp"),
    "max_accuracy_drop_pct": ("accuracy_drop_pct", "%"),
    "max_latency_p50_ms": ("latency_p50", "ms"),
    "max_latency_p90_ms": ("latency_p90", "ms"),
    "min_speedup": ("speedup", "x"),
    "max_size_bytes": ("size", "B"),
    "no_fp32_fallback": ("fp32_fallback", "nodes"),
}


@dataclass
class Check:
    """One target x check outcome.

    Attributes:
        target: Target name.
        check: ``status`` (the target ran) or a name from :data:`THRESHOLDS`.
        outcome: ``passed``, ``failed`` or ``skipped`` (not measurable in this report).
        message: Human-readable result (the violation text when failed).
        value: Measured value, when there is one.
        limit: Threshold, when there is one.
    """

    target: str
    check: str
    outcome: str
    message: str
    value: Any = None
    limit: Any = None


def _clean(thresholds: Mapping[str, Any] | None) -> dict[str, Any]:
    """Only known thresholds that are set (``None``/``False`` mean "no limit")."""
    return {k: v for k, v in (thresholds or {}).items()
            if k in THRESHOLDS and v is not None and v is not False}


def effective_thresholds(base: Mapping[str, Any] | None, target: Mapping[str, Any] | None,
                         overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Recipe gate, then the target's gate, then overrides; unset fields never erase set ones."""
    return {**_clean(base), **_clean(target), **_clean(overrides)}


def _relative_drop_pct(entry: Mapping[str, Any]) -> float | None:
    teacher, acc = entry.get("teacher_accuracy"), entry.get("accuracy")
    if teacher is None or acc is None or teacher <= 0:
        return None
    return 100.0 * (teacher - acc) / teacher


def _fp32_count(entry: Mapping[str, Any]) -> int | None:
    nodes = entry.get("fp32_nodes")
    if nodes is None:
        return None
    return int(nodes) if isinstance(nodes, (int, float)) else len(nodes)


# check -> (measure(entry), is_violation(value, limit), describe(value, limit))
_Rule = tuple[Callable[[Mapping[str, Any]], Any], Callable[[Any, Any], bool],
              Callable[[Any, Any], str]]
_RULES: dict[str, _Rule] = {
    "max_accuracy_drop": (lambda e: e.get("accuracy_drop"), lambda v, lim: v > lim,
                          lambda v, lim: f"accuracy drop {v:.2f} pp > {lim:.2f} pp"),
    "max_accuracy_drop_pct": (_relative_drop_pct, lambda v, lim: v > lim,
                              lambda v, lim: f"relative accuracy drop {v:.2f} % > {lim:.2f} %"),
    "max_latency_p50_ms": (lambda e: (e.get("latency_ms") or {}).get("p50"),
                           lambda v, lim: v > lim,
                           lambda v, lim: f"p50 latency {v:.4f} ms > {lim:g} ms"),
    "max_latency_p90_ms": (lambda e: (e.get("latency_ms") or {}).get("p90"),
                           lambda v, lim: v > lim,
                           lambda v, lim: f"p90 latency {v:.4f} ms > {lim:g} ms"),
    "min_speedup": (lambda e: e.get("speedup_vs_teacher"), lambda v, lim: v < lim,
                    lambda v, lim: f"speedup vs teacher {v:.2f}x < {lim:g}x"),
    "max_size_bytes": (lambda e: e.get("size_bytes"), lambda v, lim: v > lim,
                       lambda v, lim: f"artifact size {v:,} B > {lim:,} B"),
    "no_fp32_fallback": (_fp32_count, lambda v, lim: v > 0,
                         lambda v, lim: f"{v} node(s) fell back to FP32"),
}

_MISSING = {
    "max_accuracy_drop": "no teacher accuracy in this report",
    "max_accuracy_drop_pct": "no teacher accuracy in this report",
    "max_latency_p50_ms": "no latency measured",
    "max_latency_p90_ms": "no latency measured",
    "min_speedup": "no teacher latency in this report",
    "max_size_bytes": "no artifact size",
    "no_fp32_fallback": "fp32_nodes not reported for this engine",
}


def judge_target(entry: Mapping[str, Any], thresholds: Mapping[str, Any]) -> list[Check]:
    """Every check for one target entry: its status first, then each set threshold."""
    name = str(entry.get("name", "?"))
    status = entry.get("status")
    if status == "skipped":
        reason = entry.get("reason") or "skipped"
        return [Check(name, "status", "skipped", f"{name}: skipped: {reason}")]
    if status != "ok":
        reason = entry.get("reason") or f"status {status!r}"
        return [Check(name, "status", "failed", f"{name}: target failed: {reason}")]
    checks = [Check(name, "status", "passed", f"{name}: ran")]
    for key, limit in _clean(thresholds).items():
        check = THRESHOLDS[key][0]
        measure, violated, describe = _RULES[key]
        value = measure(entry)
        if value is None:
            checks.append(Check(name, check, "skipped", f"{name}: {check}: {_MISSING[key]}",
                                limit=limit))
        elif violated(value, limit):
            checks.append(Check(name, check, "failed", f"{name}: {describe(value, limit)}",
                                value, limit))
        else:
            checks.append(Check(name, check, "passed", f"{name}: {check} ok", value, limit))
    return checks


def judge(targets: list[Mapping[str, Any]], thresholds: Mapping[str, Any] | None = None,
          per_target: Mapping[str, Mapping[str, Any]] | None = None,
          overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The report's ``gate`` section.

    Args:
        targets: The report's target entries.
        thresholds: Thresholds for every target (the recipe's ``gate``).
        per_target: Target name -> its own thresholds (win over ``thresholds``).
        overrides: Thresholds that win over both (command-line options).

    Returns:
        ``{"passed", "thresholds", "target_thresholds", "violations", "checks"}``; ``violations``
        lists the message of every failed check (a failed target counts).
    """
    per_target = per_target or {}
    checks: list[Check] = []
    effective = {}
    for entry in targets:
        name = str(entry.get("name", "?"))
        effective[name] = effective_thresholds(thresholds, per_target.get(name), overrides)
        checks += judge_target(entry, effective[name])
    violations = [c.message for c in checks if c.outcome == "failed"]
    for c in checks:
        if c.outcome == "skipped" and c.check != "status":
            logger.warning("gate: %s (not judged)", c.message)
    return {"passed": not violations,
            "thresholds": effective_thresholds(thresholds, None, overrides),
            "target_thresholds": {k: v for k, v in per_target.items() if v},
            "violations": violations, "checks": [asdict(c) for c in checks]}


def rejudge(report: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
            ) -> dict[str, Any]:
    """Judge a saved report again, with its own thresholds plus ``overrides``."""
    gate = report.get("gate") or {}
    return judge(list(report.get("targets") or []), gate.get("thresholds"),
                 gate.get("target_thresholds"), overrides)


def recipe_thresholds(recipe: Any) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``(recipe gate, {target: its gate})`` from a :class:`~edgecompress.recipe.Recipe`."""
    base = _clean(recipe.gate.model_dump())
    per = {t.name: _clean(t.gate.model_dump()) for t in recipe.targets}
    return base, {k: v for k, v in per.items() if v}
