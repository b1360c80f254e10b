"""`compare`: per-target deltas, planted regressions beyond tolerance, exit codes."""

from __future__ import annotations

import copy

from edgecompress.compare import compare_reports, format_comparison
from edgecompress.report import save_report
from tests.conftest import run_cli
from tests.reports import make_report, target_entry


def _slower(report, factor):
    new = copy.deepcopy(report)
    for key in ("p50", "p90"):
        new["targets"][0]["latency_ms"][key] *= factor
    return new


def test_identical_reports_do_not_regress():
    report = make_report()
    result = compare_reports(report, copy.deepcopy(report))
    assert not result.regressed
    assert result.rows[0]["accuracy_delta_pp"] == 0 and result.rows[0]["p50_delta_pct"] == 0


def test_planted_regressions_are_flagged():
    old = make_report()
    slower = _slower(old, 1.25)
    result = compare_reports(old, slower, latency_tolerance_pct=10)
    assert result.regressed
    assert result.regressions[0].startswith("cpu: p50 latency 1.0000 ms -> 1.2500 ms (+25.0 %")
    assert not compare_reports(old, slower, latency_tolerance_pct=30).regressed
    worse = copy.deepcopy(old)
    worse["targets"][0]["accuracy"] = 0.93
    result = compare_reports(old, worse, accuracy_tolerance_pp=1.0)
    assert [m.split(" (")[0] for m in result.regressions] == ["cpu: accuracy 95.00 % -> 93.00 %"]
    assert not compare_reports(old, worse, accuracy_tolerance_pp=2.5).regressed


def test_lost_and_broken_targets_regress():
    old = make_report([target_entry("a"), target_entry("b")])
    new = make_report([{"name": "a", "status": "skipped", "reason": "no runtime"},
                       target_entry("c")])
    result = compare_reports(old, new)
    assert result.regressions == ["a: ran before, now skipped: no runtime",
                                  "b: target missing from the new report"]
    assert "c" in format_comparison(result)


def test_compare_cli(tmp_path):
    old = save_report(make_report(), tmp_path / "old.json")
    new = save_report(_slower(make_report(), 1.5), tmp_path / "new.json")
    same = run_cli("compare", str(old), str(old))
    assert same.returncode == 0 and "no regression" in same.stdout
    bad = run_cli("compare", str(old), str(new), "--latency-tolerance-pct", "20")
    assert bad.returncode == 1
    assert "+50.0" in bad.stdout and "REGRESSION" in bad.stdout
    ok = run_cli("compare", str(old), str(new), "--latency-tolerance-pct", "60")
    assert ok.returncode == 0
    missing = run_cli("compare", str(old), str(tmp_path / "absent.json"))
    assert missing.returncode == 2 and "absent.json" in missing.stderr
