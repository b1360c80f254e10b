"""The gate on crafted reports: each kind of threshold passes and fails, JUnit output, the CLI."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from edgecompress.gate import judge, rejudge
from edgecompress.junit import render_junit
from edgecompress.report import dump_report, load_report, render_markdown, save_report
from tests.conftest import run_cli
from tests.reports import make_report, target_entry

# threshold -> (a limit the crafted target meets, a limit it violates, words of the violation)
CASES = {
    "max_accuracy_drop": (2.5, 1.0, "accuracy drop 2.00 pp > 1.00 pp"),
    "max_accuracy_drop_pct": (3.0, 1.0, "relative accuracy drop 2.06 % > 1.00 %"),
    "max_latency_p50_ms": (1.2, 0.8, "p50 latency 1.0000 ms > 0.8 ms"),
    "max_latency_p90_ms": (2.0, 1.2, "p90 latency 1.5000 ms > 1.2 ms"),
    "min_speedup": (3.0, 5.0, "speedup vs teacher 4.00x < 5x"),
    "max_size_bytes": (200_000, 50_000, "artifact size 100,000 B > 50,000 B"),
}


@pytest.mark.parametrize("key", list(CASES))
def test_each_threshold_passes_and_fails(key):
    ok_limit, bad_limit, words = CASES[key]
    passed = judge([target_entry()], {key: ok_limit})
    assert passed["passed"] and passed["violations"] == []
    failed = judge([target_entry()], {key: bad_limit})
    assert not failed["passed"]
    assert failed["violations"] == [f"cpu: {words}"]
    (check,) = [c for c in failed["checks"] if c["check"] != "status"]
    assert check["outcome"] == "failed" and check["limit"] == bad_limit


def test_fp32_fallback_is_judged_only_when_reported():
    clean = judge([target_entry(fp32_nodes=[])], {"no_fp32_fallback": True})
    assert clean["passed"]
    dirty = judge([target_entry(fp32_nodes=["Conv_3", "Gemm_7"])], {"no_fp32_fallback": True})
    assert dirty["violations"] == ["cpu: 2 node(s) fell back to FP32"]
    unknown = judge([target_entry()], {"no_fp32_fallback": True})
    assert unknown["passed"]
    assert [c["outcome"] for c in unknown["checks"]] == ["passed", "skipped"]


def test_per_target_thresholds_override_and_every_violation_is_listed():
    targets = [target_entry("a"), target_entry("b", accuracy=0.90, accuracy_drop=7.0)]
    gate = judge(targets, {"max_accuracy_drop": 1.0, "max_latency_p50_ms": 0.5},
                 {"a": {"max_accuracy_drop": 3.0}})
    assert gate["violations"] == [
        "a: p50 latency 1.0000 ms > 0.5 ms",
        "b: accuracy drop 7.00 pp > 1.00 pp", "b: p50 latency 1.0000 ms > 0.5 ms"]
    # Command-line overrides beat a target's own threshold.
    gate = judge(targets, None, {"a": {"max_accuracy_drop": 3.0}}, {"max_accuracy_drop": 10.0})
    assert gate["passed"]


def test_failed_and_skipped_targets():
    targets = [target_entry("up"), {"name": "down", "status": "failed", "reason": "boom"},
               {"name": "far", "status": "skipped", "reason": "needs a device"}]
    gate = judge(targets, {"max_accuracy_drop": 5.0})
    assert gate["violations"] == ["down: target failed: boom"]
    outcomes = {(c["target"], c["check"]): c["outcome"] for c in gate["checks"]}
    assert outcomes == {("up", "status"): "passed", ("up", "accuracy_drop"): "passed",
                        ("down", "status"): "failed", ("far", "status"): "skipped"}


def test_teacherless_target_skips_teacher_checks():
    entry = target_entry(teacher_accuracy=None, accuracy_drop=None, speedup_vs_teacher=None,
                         teacher_latency_ms=None)
    gate = judge([entry], {"max_accuracy_drop": 0.1, "min_speedup": 100, "max_latency_p50_ms": 2})
    assert gate["passed"]
    assert {c["check"]: c["outcome"] for c in gate["checks"]} == {
        "status": "passed", "accuracy_drop": "skipped", "speedup": "skipped",
        "latency_p50": "passed"}


def test_junit_has_one_testcase_per_target_and_check():
    targets = [target_entry("a"), target_entry("b", size_bytes=10**7),
               {"name": "c", "status": "skipped", "reason": "no runtime"}]
    gate = judge(targets, {"max_accuracy_drop": 5.0, "max_size_bytes": 10**6})
    root = ET.fromstring(render_junit(gate))
    (suite,) = root.findall("testsuite")
    cases = {(c.get("classname"), c.get("name")): c for c in suite.findall("testcase")}
    assert set(cases) == {("edgecompress.a", "status"), ("edgecompress.a", "accuracy_drop"),
                          ("edgecompress.a", "size"), ("edgecompress.b", "status"),
                          ("edgecompress.b", "accuracy_drop"), ("edgecompress.b", "size"),
                          ("edgecompress.c", "status")}
    failure = cases[("edgecompress.b", "size")].find("failure")
    assert failure is not None and "10,000,000 B > 1,000,000 B" in failure.get("message")
    assert cases[("edgecompress.c", "status")].find("skipped") is not None
    assert cases[("edgecompress.a", "size")].find("failure") is None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("7", "1", "1")


def test_report_round_trips(tmp_path):
    report = make_report(thresholds={"max_accuracy_drop": 1.0},
                         target_thresholds={"cpu": {"min_speedup": 2.0}})
    path = save_report(report, tmp_path / "report.json")
    loaded = load_report(path)
    assert loaded == report
    assert dump_report(loaded) == path.read_text()
    assert rejudge(loaded) == report["gate"]
    md = render_markdown(loaded)
    assert "**FAILED**" in md and "| cpu | speedup | passed | 4 | 2 |" in md


def test_gate_cli_rejudges_and_writes_junit(tmp_path):
    path = save_report(make_report(thresholds={"max_accuracy_drop": 3.0}),
                       tmp_path / "report.json")
    ok = run_cli("gate", str(path))
    assert ok.returncode == 0, ok.stderr
    assert "gate: PASSED" in ok.stdout
    junit = ET.parse(tmp_path / "junit.xml").getroot()
    assert len(list(junit.iter("testcase"))) == 2
    bad = run_cli("gate", str(path), "--max-accuracy-drop", "1.0", "--max-latency-p90-ms", "1")
    assert bad.returncode == 1
    assert "cpu: accuracy drop 2.00 pp > 1.00 pp" in bad.stderr
    assert "cpu: p90 latency 1.5000 ms > 1 ms" in bad.stderr
    failures = list(ET.parse(tmp_path / "junit.xml").getroot().iter("failure"))
    assert len(failures) == 2
    # The saved report itself is not modified by re-judging.
    assert json.loads(path.read_text())["gate"]["passed"] is True


@pytest.mark.parametrize("content, words", [
    ("{not json", "not a JSON report"),
    ('{"schema_version": 1, "targets": [{"status": "ok"}], "gate": {}}', "targets.0.name"),
    ('{"schema_version": 7, "targets": [], "gate": {}}', "schema_version"),
])
def test_malformed_report_is_bad_input(tmp_path, content, words):
    path = tmp_path / "report.json"
    path.write_text(content)
    result = run_cli("gate", str(path))
    assert result.returncode == 2, result.stderr
    assert str(path) in result.stderr and words in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "junit.xml").exists()


def test_cli_stays_light_and_lists_the_new_commands():
    import subprocess
    import sys

    code = ("import sys, edgecompress.cli; print(sorted(m for m in ('torch', 'matplotlib', "
            "'onnxruntime', 'numpy') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr
    result = run_cli("--help")
    for command in ("bench", "compare", "gate", "targets"):
        assert f"  {command} " in result.stdout


@pytest.mark.parametrize("prune_metrics", [
    {"enabled": True, "params_before": 400, "macs_before": 4000},          # image prune stage
    {"enabled": True, "summary_before": {"params": 400, "macs": 4000}},    # text prune stage
])
def test_models_table_shows_the_unpruned_and_pruned_student(prune_metrics):
    report = make_report()
    report["stages"] = [{"name": "prune", "seconds": 1.0, "metrics": prune_metrics}]
    md = render_markdown(report)
    assert "| student (distilled) | 95.00 % | 400 | 4,000 |" in md
    assert "| student (distilled, pruned) | 95.00 % | 100 | 1,000 |" in md


def test_models_table_names_the_distillation_gain_only_when_a_baseline_ran():
    report = make_report()
    assert "Distillation gain over the hard-label baseline: +1.00 pp." in render_markdown(report)
    del report["student"]["distillation_gain_pp"]
    assert "Distillation gain" not in render_markdown(report)


def test_gate_command_takes_min_int8_speedup(tmp_path):
    """`edgecompress gate --min-int8-speedup`: an int8 engine slower than its FP32 twin fails."""
    import json

    from tests.conftest import run_main
    from tests.reports import make_report, target_entry

    report = make_report([target_entry("int8", precision="int8", int8_speedup_vs_fp32=0.8)])
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    code, out = run_main("gate", path, "--min-int8-speedup", "1.0")
    assert code == 1 and "int8 engine 0.80x vs its FP32 twin" in out
    assert run_main("gate", path, "--min-int8-speedup", "0.5")[0] == 0
