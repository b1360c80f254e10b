"""The recipe's deployment side: ``targets`` (backend, profile, precision, timing, per-target
gate) and the run-level ``gate``. Part of :mod:`edgecompress.recipe`."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from edgecompress.config import GateConfig, _Strict


class RunGateConfig(GateConfig):
    """The recipe's top-level ``gate``: every target's thresholds, plus run-level ones."""

    min_distillation_gain_pp: float | None = Field(
        None, description="Run-level: min test-accuracy gain of the distilled student over the "
        "hard-label one, in pp (needs stages.distill.baseline; negative values tolerate a "
        "loss). Fails the run when distillation stops paying, even though the stage then "
        "carries the hard-label student forward.")


def _local_target_name(raw: dict[str, Any]) -> str:
    """A profile-less target's default name: the ISA class it runs on and its precision, so a
    report never calls an AVX2 measurement 'x86-avx512'."""
    from edgecompress.isa import cpu_info

    isa = raw.get("isa") if isinstance(raw.get("isa"), str) else cpu_info().isa
    precision = raw.get("precision") if isinstance(raw.get("precision"), str) else "fp32"
    backend = raw.get("backend") if isinstance(raw.get("backend"), str) else "onnxruntime"
    name = f"{isa}-{precision}"
    return name if backend == "onnxruntime" else f"{backend}-{name}"


class TargetConfig(_Strict):
    """One deployment target: which backend builds and runs the engine, and how it is timed.

    ``profile`` names a target profile (``targets/<name>.yaml``, or a path to one); the profile
    fills every field the recipe leaves out, and its ``budgets`` become this target's ``gate``
    defaults. Fields written in the recipe always win.
    """

    name: str = Field(description="Target name, used for the engine directory and in the report "
                      "(default: the profile's name; without a profile, what it runs on: "
                      "<isa>-<precision> for onnxruntime, e.g. avx2-int8, else "
                      "<backend>-<isa>-<precision>).")
    profile: str | None = Field(None, description="Target profile name or YAML path whose "
                                "settings fill the fields not given here.")
    note: str = Field("", description="Shown next to the target in the report, e.g. that it "
                      "was measured on a stand-in (this CPU) rather than the real device.")
    backend: str = Field("onnxruntime", description="Registered backend name.")
    precision: str = Field("fp32", description="Engine precision (must be supported by the "
                           "backend).")
    quant_preset: str | None = Field(None, description="INT8 preset (ort-x86, ort-x86-vnni, "
                                     "ort-x86-avx2, ort-arm64, tensorrt, tflite) of an int8 "
                                     "target; default: the backend's own (ort-x86 picks the "
                                     "ONNX Runtime form for the target's isa).")
    isa: str | None = Field(None, description="ISA class of the CPU that runs the engine "
                            "(avx2, avx512, avx512-vnni, avx-vnni, arm64, arm64-dotprod, "
                            "arm64-i8mm); null: this machine's, detected. A profile sets it "
                            "from its requires.cpu_flags.")
    threads: int = Field(1, ge=1, description="Intra-op threads for the benchmark.")
    batch_size: int = Field(1, ge=1, description="Batch size of the latency measurement.")
    warmup: int = Field(20, ge=0, description="Untimed warm-up runs.")
    runs: int = Field(200, ge=50, description="Timed runs (>= 50); with max_seconds, the most.")
    max_seconds: float | None = Field(None, gt=0, description="Optional time budget of the timed "
                                      "loop per model: stop once it is spent and min_runs ran.")
    min_runs: int = Field(50, ge=10, description="With max_seconds: timed runs always made.")
    gate: GateConfig = Field(default_factory=GateConfig, description="Thresholds for this target "
                             "only; a value set here overrides the recipe's gate.")

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and not raw.get("profile") and not raw.get("name"):
            return {**raw, "name": _local_target_name(raw)}
        if not isinstance(raw, dict) or not raw.get("profile"):
            return raw
        from edgecompress.targets import profile_for_validator

        return profile_for_validator(raw["profile"]).fill_target(raw)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not value or not all(ch.isalnum() or ch in "-_." for ch in value) or value[0] == ".":
            raise ValueError("use letters, digits, '-', '_' and '.' only")
        return value

    @field_validator("isa")
    @classmethod
    def _known_isa(cls, value: str | None) -> str | None:
        from edgecompress.isa import PEAKS

        if value is not None and value not in PEAKS:
            raise ValueError(f"unknown ISA class {value!r}; known: {', '.join(PEAKS)}")
        return value

    @model_validator(mode="after")
    def _budget(self) -> TargetConfig:
        if self.max_seconds is not None and self.min_runs > self.runs:
            raise ValueError(f"min_runs ({self.min_runs}) must be <= runs ({self.runs})")
        return self
