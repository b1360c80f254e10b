"""The strict pydantic base of every config model and the gate thresholds.

Shared by recipes (:mod:`edgecompress.recipe`) and target profiles (:mod:`edgecompress.targets`),
which is why it is a module of its own: a profile's ``budgets`` are gate thresholds, and a recipe
target may name a profile, so keeping these here lets both import it without importing each
other.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

#: Upper bounds (inclusive) of numeric fields, by field name, wherever they appear (recipe,
#: target, profile). Far above any real use; they turn `epochs: 1e18` or `threads: 100000` into a
#: clear error instead of a run that never ends or a machine that runs out of memory.
FIELD_MAXIMA: dict[str, float] = {
    "epochs": 10_000, "recovery_epochs": 10_000, "patience": 10_000, "unfreeze_every": 10_000,
    "steps": 1_000, "taylor_batches": 100_000, "batch_size": 65_536, "threads": 1_024,
    "warmup": 1_000_000, "runs": 10_000_000, "min_runs": 10_000_000,
    "max_seconds": 7 * 86_400, "limit": 1_000_000_000, "calibration_samples": 10_000_000,
    "lr": 10.0, "temperature": 1_000.0, "round_to": 1_024, "max_fallback_layers": 10_000,
    "freeze_observers_after": 1_000_000_000, "freeze_bn_after": 1_000_000_000,
    "seed": 2**32 - 1, "connect_timeout": 3_600.0, "timeout": 7 * 86_400.0,
}


def check_field_range(value: Any, info: ValidationInfo) -> Any:
    """Validator for every field: numbers stay within :data:`FIELD_MAXIMA` (and seeds >= 0)."""
    limit = FIELD_MAXIMA.get(info.field_name or "")
    if limit is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        if value > limit:
            raise ValueError(f"{value:g} is out of range (at most {limit:g})")
        if info.field_name == "seed" and value < 0:
            raise ValueError(f"{value} is out of range (a seed is >= 0)")
    return value


class _Strict(BaseModel):
    """Base model: unknown keys are errors, values are validated on assignment too; numbers
    are finite (no inf/NaN) and within :data:`FIELD_MAXIMA`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    _ranges = field_validator("*", mode="after", check_fields=False)(check_field_range)


class GateConfig(_Strict):
    """Thresholds that fail the run (exit 1) when exceeded; the report is written either way.

    The same fields appear in a recipe's top-level ``gate`` (every target), in a target's own
    ``gate`` (that target only; a value set there wins) and in a target profile's ``budgets``.
    ``null`` means "no limit". A threshold whose measurement is absent from the report (no
    teacher, no ``fp32_nodes`` yet) is reported as skipped, never as passed or failed.
    """

    max_accuracy_drop: float | None = Field(None, ge=0, description="Max accuracy drop of a "
                                            "target vs the teacher, in percentage points.")
    max_accuracy_drop_pct: float | None = Field(None, ge=0, le=100, description="Max accuracy "
                                                "drop relative to the teacher's accuracy, in %.")
    max_latency_p50_ms: float | None = Field(None, gt=0, description="Max median latency (ms).")
    max_latency_p90_ms: float | None = Field(None, gt=0, description="Max p90 latency (ms).")
    min_speedup: float | None = Field(None, gt=0, description="Min speedup vs the teacher (teacher "
                                      "p50 / target p50, same run; the median of same-round "
                                      "ratios of the interleaved benchmark).")
    min_int8_speedup: float | None = Field(None, gt=0, description="Min speedup of an int8 "
                                           "target over its FP32 twin (the same student in FP32 "
                                           "on the same runtime, timed in the same rounds); 1.0 "
                                           "fails an int8 engine that is not faster.")
    max_size_bytes: int | None = Field(None, gt=0, description="Max size of the target's engine "
                                       "artifact in bytes.")
    no_fp32_fallback: bool = Field(False, description="Fail a target whose engine runs any node "
                                   "in FP32 that should be quantized (judged when the report "
                                   "lists targets[].fp32_nodes).")
