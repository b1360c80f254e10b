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
    "min_int8_speedup": ("int8_speedup", "x"),
    "max_size_bytes": ("size", "B"),
    "no_fp32_fallback": ("fp32_fallback", "nodes"),
}

#: Run-level thresholds, judged once per run rather than per target: field -> (check, unit).
#: They live in the recipe's top-level ``gate`` only; their checks name :data:`RUN_TARGET`.
RUN_THRESHOLDS: dict[str, tuple[str, str]] = {
    "min_distillation_gain_pp": ("distillation_gain", "pp"),
}
#: The ``target`` of run-level checks (JUnit classname ``edgecompress.run``).
RUN_TARGET = "run"


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
    return _clean_known(thresholds, THRESHOLDS)


def _clean_known(thresholds: Mapping[str, Any] | None, known: Mapping[str, Any]
                 ) -> dict[str, Any]:
    return {k: v for k, v in (thresholds or {}).items()
            if k in known and v is not None and v is not False}


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
    "min_int8_speedup": (lambda e: e.get("int8_speedup_vs_fp32"), lambda v, lim: v < lim,
                         lambda v, lim: f"int8 engine {v:.2f}x vs its FP32 twin (same student, "
                                        f"same runtime) < {lim:g}x"),
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
    "min_int8_speedup": "no FP32 twin timed (not a local int8 target)",
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
          overrides: Mapping[str, Any] | None = None, *,
          run: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The report's ``gate`` section.

    Args:
        targets: The report's target entries.
        thresholds: Thresholds for every target (the recipe's ``gate``).
        per_target: Target name -> its own thresholds (win over ``thresholds``).
        overrides: Thresholds that win over both (command-line options).
        run: The report (or the part of it) that run-level thresholds
            (:data:`RUN_THRESHOLDS`, e.g. ``min_distillation_gain_pp``) measure.

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
    run_limits = {**_clean_known(thresholds, RUN_THRESHOLDS),
                  **_clean_known(overrides, RUN_THRESHOLDS)}
    checks += judge_run(run or {}, run_limits)
    violations = [c.message for c in checks if c.outcome == "failed"]
    for c in checks:
        if c.outcome == "skipped" and c.check != "status":
            logger.warning("gate: %s (not judged)", c.message)
    return {"passed": not violations,
            "thresholds": {**effective_thresholds(thresholds, None, overrides), **run_limits},
            "target_thresholds": {k: v for k, v in per_target.items() if v},
            "violations": violations, "checks": [asdict(c) for c in checks]}


def rejudge(report: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
            ) -> dict[str, Any]:
    """Judge a saved report again, with its own thresholds plus ``overrides``."""
    gate = report.get("gate") or {}
    return judge(list(report.get("targets") or []), gate.get("thresholds"),
                 gate.get("target_thresholds"), overrides, run=report)


def _distillation_gain(report: Mapping[str, Any]) -> float | None:
    return (report.get("distillation") or {}).get("gain_pp")


# Run-level rules, in the shape of ``_RULES``; measured on the whole report.
_RUN_RULES: dict[str, _Rule] = {
    "min_distillation_gain_pp": (
        _distillation_gain, lambda v, lim: v < lim,
        lambda v, lim: f"distillation gain {v:+.2f} pp < {lim:+.2f} pp (distilled vs "
                       f"hard-label student, test split)"),
}

_RUN_MISSING = {
    "min_distillation_gain_pp": "no hard-label baseline in this report "
                                "(stages.distill.baseline off)",
}


def judge_run(report: Mapping[str, Any], thresholds: Mapping[str, Any]) -> list[Check]:
    """The run-level checks (one per set threshold of :data:`RUN_THRESHOLDS`)."""
    checks = []
    for key, limit in _clean_known(thresholds, RUN_THRESHOLDS).items():
        check = RUN_THRESHOLDS[key][0]
        measure, violated, describe = _RUN_RULES[key]
        value = measure(report)
        if value is None:
            checks.append(Check(RUN_TARGET, check, "skipped",
                                f"{RUN_TARGET}: {check}: {_RUN_MISSING[key]}", limit=limit))
        elif violated(value, limit):
            checks.append(Check(RUN_TARGET, check, "failed",
                                f"{RUN_TARGET}: {describe(value, limit)}", value, limit))
        else:
            checks.append(Check(RUN_TARGET, check, "passed", f"{RUN_TARGET}: {check} ok",
                                value, limit))
    return checks


def recipe_thresholds(recipe: Any) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``(recipe gate, {target: its gate})`` from a :class:`~edgecompress.recipe.Recipe`."""
    dump = recipe.gate.model_dump()
    base = {**_clean(dump), **_clean_known(dump, RUN_THRESHOLDS)}
    per = {t.name: _clean(t.gate.model_dump()) for t in recipe.targets}
    return base, {k: v for k, v in per.items() if v}


#: Numeric target fields the gate and ``compare`` read: (name, lower bound, upper bound).
_TARGET_NUMBERS = (("accuracy", 0.0, 1.0), ("teacher_accuracy", 0.0, 1.0),
                   ("accuracy_drop", -100.0, 100.0), ("size_bytes", 0, None),
                   ("teacher_size_bytes", 0, None), ("speedup_vs_teacher", 0.0, None))
_LATENCY_NUMBERS = ("p50", "p90", "p99", "mean")


def _number_problem(value: Any, low: float | None, high: float | None) -> str | None:
    """Why ``value`` is not a usable report number (``None`` is always accepted)."""
    from edgecompress.inputs import is_finite_number

    if value is None:
        return None
    if not is_finite_number(value):
        kind = "NaN/inf" if isinstance(value, float) else f"a {type(value).__name__}"
        return f"{value!r} is {kind}, expected a finite number or null"
    if (low is not None and value < low) or (high is not None and value > high):
        return f"{value!r} is outside [{low}, {'inf' if high is None else high}]"
    return None


def check_report_values(report: Mapping[str, Any], source: str) -> None:
    """Check the values the gate and ``compare`` compute with, after ``load_report`` checked
    the structure: numbers are numbers (not strings, NaN or inf) in their range, nested
    sections are objects, thresholds are numbers or booleans.

    Raises:
        ConfigError: naming ``source`` and every key at fault.
    """
    from edgecompress.errors import ConfigError

    problems = []
    env = report.get("environment")
    if env is not None and not isinstance(env, dict):
        problems.append("environment: expected an object")
    elif env is not None and env.get("cpu") is not None and not isinstance(env.get("cpu"), dict):
        problems.append("environment.cpu: expected an object")
    for i, entry in enumerate(report.get("targets") or []):
        if not isinstance(entry, dict):
            continue  # load_report reports it
        for key, low, high in _TARGET_NUMBERS:
            why = _number_problem(entry.get(key), low, high)
            if why:
                problems.append(f"targets.{i}.{key}: {why}")
        for section in ("latency_ms", "teacher_latency_ms"):
            lat = entry.get(section)
            if lat is None:
                continue
            if not isinstance(lat, dict):
                problems.append(f"targets.{i}.{section}: expected an object")
                continue
            for key in _LATENCY_NUMBERS:
                why = _number_problem(lat.get(key), 0.0, None)
                if why:
                    problems.append(f"targets.{i}.{section}.{key}: {why}")
        nodes = entry.get("fp32_nodes")
        if nodes is not None and not isinstance(nodes, list) and _number_problem(nodes, 0, None):
            problems.append(f"targets.{i}.fp32_nodes: expected a list of names or a count")
    gate = report.get("gate") or {}
    per_target = gate.get("target_thresholds") or {}
    sections = [("gate.thresholds", gate.get("thresholds") or {})]
    sections += [(f"gate.target_thresholds.{k}", v) for k, v in per_target.items()]
    for where, thresholds in sections:
        if not isinstance(thresholds, dict):
            problems.append(f"{where}: expected an object")
            continue
        for key, value in thresholds.items():
            if key not in THRESHOLDS or value is None or isinstance(value, bool):
                continue
            why = _number_problem(value, 0, None)
            if why:
                problems.append(f"{where}.{key}: {why}")
    if problems:
        raise ConfigError(f"{source}: invalid report values\n  " + "\n  ".join(problems))
