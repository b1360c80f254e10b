"""The embedded demo end to end: the numbers the README promises, measured on every CI run."""

from __future__ import annotations

import json

import pytest

from edgecompress.families import get_family
from edgecompress.isa import cpu_info
from edgecompress.quant.presets import preset_for_target
from tests.conftest import run_cli


@pytest.mark.slow
def test_demo_meets_its_targets(tmp_path):
    out = tmp_path / "demo"
    result = run_cli("demo", "--out", str(out), timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    teacher, student = report["teacher"], report["student"]
    assert teacher["accuracy"] >= 0.97
    assert teacher["params"] >= 5 * student["params"]
    assert 100 * (teacher["accuracy"] - student["accuracy_fp32"]) <= 1.5
    # Both students are reported; the gain (distilled vs hard-label student, both before
    # pruning) is measured on 359 test images (1 image = 0.28 pp).
    assert student["baseline_accuracy_fp32"] is not None
    assert student["distillation_gain_pp"] == pytest.approx(
        100 * (student["accuracy_fp32_distilled"] - student["baseline_accuracy_fp32"]), abs=1e-3)
    targets = {t["name"]: t for t in report["targets"]}
    isa = cpu_info().isa
    # Local targets are named after the ISA class they ran on, never a CPU they did not.
    assert list(targets) == [f"{isa}-int8", f"{isa}-fp32", "android-arm64",
                             "android-arm64-fp32"]
    int8, fp32 = targets[f"{isa}-int8"], targets[f"{isa}-fp32"]
    # The report names the CPU, its ISA and the preset the int8 engine used.
    cpu = report["environment"]["cpu"]
    assert cpu["isa"] == isa and cpu["model"] and cpu["int8_peak_macs_per_cycle"] > 0
    assert int8["quant_preset"] == preset_for_target("onnxruntime", None)
    assert int8["status"] == fp32["status"] == "ok"
    assert int8["precision"] == "int8" and int8["accuracy_drop"] <= 1.5
    # Every conv/linear of the pruned student is an int8 kernel; nothing fell back to FP32.
    assert int8["fp32_nodes"] == []
    assert sum(int8["int8_kernels"].values()) >= 11
    # QAT int8 vs the float student (PyTorch, test split) and the engine size vs the teacher.
    quant = report["quantization"]["presets"][int8["quant_preset"]]
    assert abs(quant["test_drop_vs_fp32_pp"]) <= 0.5
    assert int8["size_bytes"] * 8 <= report["teacher"]["size_bytes"]
    # The student was really pruned (fewer MACs than the distilled one) before QAT.
    prune = next(s for s in report["stages"] if s["name"] == "prune")["metrics"]
    assert prune["macs_after"] <= 0.55 * prune["macs_before"]
    assert int8["teacher_latency_ms"]["p50"] > int8["latency_ms"]["p50"]
    # The phone's engine (LiteRT, measured here as a stand-in): fully integer, agrees with the
    # PyTorch INT8 student on >= 99 % of the test split, within 1.5 pp of the teacher.
    tfl = targets["android-arm64"]
    assert tfl["status"] == "ok" and "stand-in" in tfl["note"]
    assert tfl["fully_integer"] is True and tfl["fp32_nodes"] == []
    assert tfl["parity"]["top1_agreement"] >= 0.99 and tfl["accuracy_drop"] <= 1.5
    assert targets["android-arm64-fp32"]["status"] == "ok"
    assert report["gate"]["passed"] is True
    # A second demo into the same directory resumes: nothing is recomputed.
    again = run_cli("demo", "--out", str(out))
    assert again.returncode == 0
    stages = get_family("image-classification").stages()
    assert again.stderr.count("up to date, skipped") == len(stages)
