"""The embedded demo end to end: the numbers the README promises, measured on every CI run."""

from __future__ import annotations

import json

import pytest

from edgecompress.pipeline import default_stages
from tests.conftest import run_cli


@pytest.mark.slow
def test_demo_meets_its_targets(tmp_path):
    out = tmp_path / "demo"
    result = run_cli("demo", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    teacher, student = report["teacher"], report["student"]
    assert teacher["accuracy"] >= 0.97
    assert teacher["params"] >= 5 * student["params"]
    assert 100 * (teacher["accuracy"] - student["accuracy_fp32"]) <= 1.5
    # Both students are reported; the gain is measured on 359 test images (1 image = 0.28 pp).
    assert student["baseline_accuracy_fp32"] is not None
    assert student["distillation_gain_pp"] == pytest.approx(
        100 * (student["accuracy_fp32"] - student["baseline_accuracy_fp32"]), abs=1e-3)
    (target,) = report["targets"]
    assert target["name"] == "x86-avx512" and target["status"] == "ok"
    assert target["accuracy_drop"] <= 1.5
    assert target["teacher_latency_ms"]["p50"] > target["latency_ms"]["p50"]
    assert report["gate"]["passed"] is True
    # A second demo into the same directory resumes: nothing is recomputed.
    again = run_cli("demo", "--out", str(out))
    assert again.returncode == 0
    assert again.stderr.count("up to date, skipped") == len(default_stages())
