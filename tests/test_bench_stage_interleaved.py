"""The bench stage and `edgecompress bench` with interleaved timing (issue 18) and the int8 vs
FP32-twin figures and gate (issue 14 item 3). Structure and relationships only: no speeds."""

from __future__ import annotations

import json

import pytest
import yaml

from edgecompress.report import load_report
from tests.conftest import REPO, run_cli
from tests.reports import tiny_onnx


@pytest.fixture
def local_profile(tmp_path):
    raw = yaml.safe_load((REPO / "targets" / "x86-avx2.yaml").read_text())
    raw.update(name="here", runs=60, warmup=2, requires={}, budgets={})
    path = tmp_path / "here.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_bench_artifact_with_a_baseline_times_both_in_the_same_rounds(tmp_path, local_profile):
    from edgecompress.bench.artifact import bench_artifact
    from edgecompress.targets import load_profile

    model = tiny_onnx(tmp_path / "m.onnx")
    teacher = tiny_onnx(tmp_path / "teacher.onnx")
    out = tmp_path / "out"
    report = bench_artifact(model, load_profile(str(local_profile)), out, data="digits",
                            baseline=teacher)
    (entry,) = report["targets"]
    lat, tlat = entry["latency_ms"], entry["teacher_latency_ms"]
    assert lat["runs"] == tlat["runs"] == 60
    assert lat["rounds"] == tlat["rounds"] == entry["timing"]["rounds"] > 1
    assert entry["timing"]["scheme"] == "interleaved"
    assert entry["speedup_vs_teacher"] > 0 and isinstance(entry["speedup_noisy"], bool)
    assert entry["speedup_spread"]["min"] <= entry["speedup_vs_teacher"] \
        <= entry["speedup_spread"]["max"]
    assert entry["teacher_accuracy"] == entry["accuracy"]  # the same weights
    assert entry["accuracy_drop"] == 0.0
    assert lat["cpu_p50"] > 0 and lat["cpu_clock"] == "thread_time"
    results = json.loads((out / "bench" / "results.json").read_text())
    assert len(results["targets"][0]["samples_ms"]["teacher"]) == 60
    assert load_report(out / "report.json")["targets"][0]["speedup_vs_teacher"] \
        == entry["speedup_vs_teacher"]


def test_bench_cli_reports_rounds_and_cpu_time(tmp_path, local_profile):
    model = tiny_onnx(tmp_path / "m.onnx")
    out = tmp_path / "out"
    result = run_cli("bench", str(model), "--target", str(local_profile), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    (entry,) = load_report(out / "report.json")["targets"]
    lat = entry["latency_ms"]
    assert lat["runs"] == 60 and len(lat["round_p50_ms"]) == lat["rounds"] > 1
    assert lat["round_spread"]["min"] <= lat["round_spread"]["max"]
    assert lat["cpu_p50"] > 0 and entry["timing"]["engines"] == ["artifact"]


def test_missing_baseline_is_bad_input(tmp_path, local_profile):
    from edgecompress.bench.artifact import bench_artifact
    from edgecompress.errors import ConfigError
    from edgecompress.targets import load_profile

    model = tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="baseline"):
        bench_artifact(model, load_profile(str(local_profile)), tmp_path / "out",
                       baseline=tmp_path / "nope.onnx")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_pipeline_int8_target_is_paired_with_its_fp32_twin(write_recipe, tmp_path):
    pytest.importorskip("torchao")
    target = {"backend": "onnxruntime", "threads": 1, "warmup": 2, "runs": 50}
    recipe = write_recipe({
        "stages": {"qat": {"enabled": True, "mode": "ptq"}},
        "targets": [{**target, "name": "cpu-int8", "precision": "int8"},
                    {**target, "name": "cpu-fp32", "precision": "fp32"}],
        # No int8 engine is 1000x faster than its FP32 twin: the gate must fail on it.
        "gate": {"min_int8_speedup": 1000.0}})
    out = tmp_path / "run"
    result = run_cli("run", str(recipe), "--out", str(out))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "vs its FP32 twin" in result.stdout + result.stderr
    report = json.loads((out / "report.json").read_text())
    int8, fp32 = report["targets"]
    assert int8["status"] == fp32["status"] == "ok"
    # One interleaved benchmark: teacher, FP32 student (shared by both targets) and int8.
    assert int8["timing"] == fp32["timing"] and len(int8["timing"]["engines"]) == 3
    assert int8["teacher_latency_ms"]["round_p50_ms"] == fp32["teacher_latency_ms"]["round_p50_ms"]
    assert int8["fp32_latency_ms"]["round_p50_ms"] == fp32["latency_ms"]["round_p50_ms"]
    assert int8["fp32_accuracy"] == fp32["accuracy"]
    assert (out / int8["fp32_artifact"]).is_file()
    ratio = int8["int8_speedup_vs_fp32"]
    assert int8["int8_speedup_spread"]["min"] <= ratio <= int8["int8_speedup_spread"]["max"]
    assert bool(int8.get("int8_not_faster")) == (ratio <= 1.0)
    assert "int8_speedup_vs_fp32" not in fp32
    tp = int8["throughput"]
    assert tp["macs_per_call"] == report["student"]["macs"] and tp["gmacs_per_s"] > 0
    if tp["peak"] is not None:
        assert tp["peak"]["formula"] and 0 < tp["peak_fraction"]
    checks = {(c["target"], c["check"]): c["outcome"] for c in report["gate"]["checks"]}
    assert checks[("cpu-int8", "int8_speedup")] == "failed"
    assert checks[("cpu-fp32", "int8_speedup")] == "skipped"
    md = (out / "report.md").read_text()
    assert "int8/fp32" in md
