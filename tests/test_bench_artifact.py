"""`edgecompress bench` on a tiny ONNX file, the harness's time budget, SNR and report.html."""

from __future__ import annotations

import json
import logging
import sys
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import yaml

from edgecompress.bench import measure_latency, snr_db
from edgecompress.bench.parity import SNR_CAP_DB, parity_summary
from edgecompress.report import load_report
from edgecompress.report_html import render_html, write_html_report
from tests.conftest import REPO, run_cli
from tests.reports import make_report, tiny_onnx


@pytest.fixture
def local_profile(tmp_path):
    """A profile that runs on any machine with ORT (no ISA requirement), 60 quick runs."""
    raw = yaml.safe_load((REPO / "targets" / "x86-avx2.yaml").read_text())
    raw.update(name="here", runs=60, warmup=2, requires={},
               budgets={"max_latency_p50_ms": 1000.0})
    path = tmp_path / "here.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_bench_cli_on_digits(tmp_path, local_profile):
    model = tiny_onnx(tmp_path / "m.onnx")
    out = tmp_path / "out"
    result = run_cli("bench", str(model), "--target", str(local_profile), "--data", "digits",
                     "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    report = load_report(out / "report.json")
    (entry,) = report["targets"]
    assert entry["status"] == "ok" and entry["name"] == "here"
    assert 0.0 <= entry["accuracy"] <= 1.0 and entry["teacher_accuracy"] is None
    assert entry["size_bytes"] == model.stat().st_size
    lat = entry["latency_ms"]
    assert lat["runs"] == 60 and lat["input_shape"] == [1, 1, 8, 8]
    assert report["teacher"] is None
    assert report["dataset"]["eval_samples"] == 359  # the demo's test split
    assert report["gate"]["passed"]
    results = json.loads((out / "bench" / "results.json").read_text())
    assert len(results["targets"][0]["samples_ms"]["student"]) == 60
    assert results["environment"]["cpu"]["model"]
    assert "samples_ms" not in entry
    cases = list(ET.parse(out / "junit.xml").getroot().iter("testcase"))
    assert [c.get("name") for c in cases] == ["status", "latency_p50"]
    assert "<img" in (out / "report.html").read_text()
    # A second run into the same directory is refused unless --overwrite; a gate override fails.
    again = run_cli("bench", str(model), "--target", str(local_profile), "--out", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr
    strict = run_cli("bench", str(model), "--target", str(local_profile), "--out", str(out),
                     "--overwrite", "--max-latency-p50-ms", "0.000001")
    assert strict.returncode == 1 and "p50 latency" in strict.stderr
    synthetic = load_report(out / "report.json")
    assert synthetic["targets"][0]["accuracy"] is None  # no --data: latency only
    assert synthetic["dataset"]["input_shape"] == [1, 8, 8]


def test_bench_bad_input(tmp_path, local_profile):
    model = tiny_onnx(tmp_path / "m.onnx")
    out = tmp_path / "out"
    unknown = run_cli("bench", str(model), "--target", "x86-avx1024", "--out", str(out))
    assert unknown.returncode == 2
    assert "unknown target profile 'x86-avx1024'" in unknown.stderr
    assert "x86-avx512" in unknown.stderr and "jetson-orin-nano" in unknown.stderr
    remote = run_cli("bench", str(model), "--target", "jetson-orin-nano", "--out", str(out))
    assert remote.returncode == 3 and "orin-nano.local" in remote.stderr
    wrong = tiny_onnx(tmp_path / "wrong.onnx", in_hw=12)
    shape = run_cli("bench", str(wrong), "--target", str(local_profile), "--data", "digits",
                    "--out", str(out))
    assert shape.returncode == 2 and "wrong.onnx" in shape.stderr
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a model")
    broken = run_cli("bench", str(corrupt), "--target", str(local_profile), "--out", str(out))
    assert broken.returncode == 2 and "corrupt.onnx" in broken.stderr
    for result in (unknown, remote, shape, broken):
        assert "Traceback" not in result.stderr
    assert not out.exists(), "bad input left files behind"


def test_time_budget_stops_early_but_keeps_min_runs():
    stats = measure_latency(lambda: time.sleep(0.002), warmup=0, runs=1000, max_seconds=0.05,
                            min_runs=10, input_shape=(1, 3))
    assert stats.stopped_by == "time_budget"
    assert 10 <= stats.runs < 100 and len(stats.samples_ms) == stats.runs
    assert stats.input_shape == [1, 3] and stats.seconds >= 0.05
    slow = measure_latency(lambda: time.sleep(0.01), warmup=0, runs=100, max_seconds=0.001,
                           min_runs=12)
    assert slow.runs == 12  # the budget never cuts below min_runs
    full = measure_latency(lambda: None, warmup=0, runs=30, max_seconds=60, min_runs=10)
    assert full.runs == 30 and full.stopped_by == "runs"


def test_snr():
    ref = np.array([[3.0, 4.0]])
    assert snr_db(ref, ref) == SNR_CAP_DB
    assert snr_db(ref, ref * 1.1) == pytest.approx(20.0)  # error = 10 % of the signal
    assert snr_db(ref, np.array([[np.nan, 4.0]])) == -SNR_CAP_DB
    summary = parity_summary(ref, ref + 1e-3)
    assert summary["top1_agreement"] == 1.0 and 60 < summary["snr_db"] < 80


def test_html_report_has_three_plots(tmp_path):
    report = make_report()
    samples = {"cpu": {"student": [1.0, 1.1, 0.9] * 20, "teacher": [4.0, 4.2] * 30}}
    path = write_html_report(report, tmp_path / "report.html", samples)
    text = path.read_text()
    assert text.count("data:image/png;base64,") == 3
    assert "no data for this plot" not in text
    # Without samples the distribution plot says so instead of failing.
    assert render_html(report).count("data:image/png;base64,") == 2


def test_html_report_skipped_without_matplotlib(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with caplog.at_level(logging.WARNING):
        assert write_html_report(make_report(), tmp_path / "report.html") is None
    assert not (tmp_path / "report.html").exists()
    assert "edgecompress[report]" in caplog.text
