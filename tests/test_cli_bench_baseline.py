"""`edgecompress bench --baseline` (issue 18): the baseline engine is timed in the same
interleaved rounds and fills the teacher fields; a bad baseline is exit 2 with a clear message.
Structure and relationships only: no speeds."""

from __future__ import annotations

import pytest
import yaml

from edgecompress.report import load_report
from tests.conftest import REPO, run_cli
from tests.reports import tiny_onnx


@pytest.fixture
def local_profile(tmp_path):
    raw = yaml.safe_load((REPO / "targets" / "x86-avx2.yaml").read_text())
    raw.update(name="here", runs=50, warmup=2, requires={}, budgets={})
    path = tmp_path / "here.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_bench_cli_baseline_is_timed_in_the_same_rounds(tmp_path, local_profile):
    model = tiny_onnx(tmp_path / "m.onnx")
    teacher = tiny_onnx(tmp_path / "teacher.onnx", classes=10)
    out = tmp_path / "out"
    result = run_cli("bench", str(model), "--target", str(local_profile), "--data", "digits",
                     "--baseline", str(teacher), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    (entry,) = load_report(out / "report.json")["targets"]
    assert entry["timing"]["scheme"] == "interleaved"
    assert sorted(entry["timing"]["engines"]) == ["artifact", "baseline"]
    lat, tlat = entry["latency_ms"], entry["teacher_latency_ms"]
    assert lat["runs"] == tlat["runs"] == 50 and lat["rounds"] == tlat["rounds"] > 1
    assert entry["speedup_vs_teacher"] > 0
    assert entry["teacher_accuracy"] == entry["accuracy"]  # the same weights


def test_bench_cli_bad_baseline_is_exit_2(tmp_path, local_profile):
    model = tiny_onnx(tmp_path / "m.onnx")
    missing = run_cli("bench", str(model), "--target", str(local_profile), "--baseline",
                      str(tmp_path / "nope.onnx"), "--out", str(tmp_path / "a"))
    assert missing.returncode == 2 and "--baseline" in missing.stderr
    assert "Traceback" not in missing.stderr and not (tmp_path / "a").exists()
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a model")
    broken = run_cli("bench", str(model), "--target", str(local_profile), "--baseline",
                     str(corrupt), "--out", str(tmp_path / "b"))
    assert broken.returncode == 2 and "corrupt.onnx" in broken.stderr
    assert "Traceback" not in broken.stderr and not (tmp_path / "b").exists()
