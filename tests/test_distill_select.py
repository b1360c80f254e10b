"""The distill stage never silently ships a worse student: distilled vs hard-label selection on
validation, the settings search, the report's ``distillation`` block and the run-level gate."""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET

import pytest
import torch

from edgecompress.errors import ConfigError
from edgecompress.gate import judge, rejudge
from edgecompress.pipeline import Pipeline, read_stage_manifest
from edgecompress.recipe import DistillConfig, load_recipe, parse_recipe
from edgecompress.report import render_markdown
from edgecompress.report_html import _distillation_html
from edgecompress.stages import distill as distill_mod
from edgecompress.stages.data import DataStage
from edgecompress.stages.distill import (
    Setting,
    choose_student,
    distillation_summary,
    search_candidates,
)
from edgecompress.stages.student import DistillStage
from edgecompress.stages.teacher import TeacherStage
from tests.reports import make_report, target_entry


def _distill(write_recipe, tmp_path, distill, **top):
    recipe = load_recipe(write_recipe({"stages": {"distill": distill}, **top}))
    out = tmp_path / "run"
    Pipeline(recipe, out, stages=[DataStage(), TeacherStage("finetune"), DistillStage()]).run()
    return out, read_stage_manifest(out, "distill")["metrics"]


def _same_weights(a, b) -> bool:
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_choice_is_made_on_validation_and_ties_keep_the_distilled_student():
    assert choose_student(0.90, 0.91) == "baseline"
    assert choose_student(0.91, 0.90) == "distilled"
    assert choose_student(0.90, 0.90) == "distilled"


def test_summary_reports_both_students_the_gains_and_the_choice():
    d = {"loss": "kd", "temperature": 4.0, "alpha": 0.5, "val_accuracy": 0.80,
         "test_accuracy": 0.85}
    b = {"val_accuracy": 0.82, "test_accuracy": 0.84}
    s = distillation_summary(d, b, None)
    assert s["kept"] == "baseline"  # better on validation, although worse on test
    assert s["gain_pp"] == pytest.approx(1.0) and s["val_gain_pp"] == pytest.approx(-2.0)
    assert s["distilled"] == {"val_accuracy": 0.80, "test_accuracy": 0.85}
    assert distillation_summary(d, None, None)["gain_pp"] is None


def test_search_grid_pins_unlisted_settings_and_respects_the_budget():
    cfg = DistillConfig(temperature=4.0, alpha=0.5, loss="kd")
    assert search_candidates(cfg) == [Setting("kd", 4.0, 0.5)]
    cfg = DistillConfig(alpha=0.5, search={"temperatures": [1, 2, 4, 8]})
    assert search_candidates(cfg) == [Setting("kd", t, 0.5) for t in (1.0, 2.0, 4.0, 8.0)]
    cfg = DistillConfig(search={"temperatures": [1, 2, 4, 8], "alphas": [0.3, 0.5, 0.7],
                                "losses": ["kd", "dist"], "max_candidates": 5})
    picked = search_candidates(cfg)
    assert len(picked) == 5 and len(set(picked)) == 5
    assert picked[0] == Setting("kd", 1.0, 0.3) and picked[-1] == Setting("dist", 8.0, 0.7)


def test_defaults_keep_a_hard_label_weight_and_search_cannot_drop_it():
    cfg = DistillConfig()
    assert 0 < cfg.alpha < 1 and cfg.loss == "kd" and cfg.search is None
    with pytest.raises(ConfigError, match=r"stages.distill.search.alphas"):
        parse_recipe({"stages": {"distill": {"search": {"alphas": [0.5, 1.0]}}}})
    with pytest.raises(ConfigError, match=r"stages.distill.loss"):
        parse_recipe({"stages": {"distill": {"loss": "fitnet"}}})


def test_better_student_is_carried_forward_and_search_is_reported(write_recipe, tmp_path):
    out, m = _distill(write_recipe, tmp_path, {
        "baseline": True, "epochs": 2, "loss": "dist",
        "search": {"temperatures": [1.0, 4.0], "alphas": [0.5], "epochs": 2}})
    block = m["distillation"]
    search = block["search"]
    assert [(c["temperature"], c["alpha"]) for c in search["candidates"]] == [(1.0, 0.5),
                                                                             (4.0, 0.5)]
    best = max(search["candidates"], key=lambda c: c["val_accuracy"])
    assert search["chosen"]["temperature"] == best["temperature"]
    # The chosen setting is what the distilled student used (trained in the search: 2 epochs).
    assert (m["student"]["temperature"], m["student"]["alpha"], m["student"]["loss"]) == \
        (best["temperature"], 0.5, "dist")
    assert block["kept"] == choose_student(m["student"]["val_accuracy"],
                                           m["baseline"]["val_accuracy"])
    kept_file = "distilled.pt" if block["kept"] == "distilled" else "baseline.pt"
    assert _same_weights(out / "distill" / "student.pt", out / "distill" / kept_file)
    assert m["final"]["val_accuracy"] >= m["baseline"]["val_accuracy"]
    assert m["distillation_gain_pp"] == block["gain_pp"]


def test_worse_distillation_ships_the_hard_label_student_and_says_so(
        write_recipe, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(distill_mod, "choose_student", lambda d, b: "baseline")
    with caplog.at_level(logging.WARNING, logger="edgecompress.stages.distill"):
        out, m = _distill(write_recipe, tmp_path, {"baseline": True, "epochs": 2})
    assert m["kept"] == "baseline" and m["distillation"]["kept"] == "baseline"
    assert m["final"] == {k: m["baseline"][k] for k in ("val_accuracy", "test_accuracy")}
    assert _same_weights(out / "distill" / "student.pt", out / "distill" / "baseline.pt")
    assert any("carrying the hard-label student forward" in r.message for r in caplog.records)


def test_without_baseline_nothing_changes(write_recipe, tmp_path):
    out, m = _distill(write_recipe, tmp_path, {"baseline": False, "epochs": 2})
    assert m["kept"] == "distilled" and "distillation" not in m
    assert not (out / "distill" / "distilled.pt").exists()
    assert (out / "distill" / "student.pt").is_file()


def _report_with(block, thresholds=None):
    report = make_report(thresholds=thresholds)
    report["distillation"] = block
    report["gate"] = judge(report["targets"], thresholds, run=report)
    return report


BLOCK = {"loss": "kd", "temperature": 4.0, "alpha": 0.5, "kept": "baseline",
         "distilled": {"val_accuracy": 0.90, "test_accuracy": 0.91},
         "baseline": {"val_accuracy": 0.92, "test_accuracy": 0.915},
         "gain_pp": -0.5, "val_gain_pp": -2.0,
         "search": {"epochs_per_candidate": 5, "chosen": {"loss": "kd", "temperature": 4.0,
                                                          "alpha": 0.5, "val_accuracy": 0.90},
                    "candidates": [{"loss": "kd", "temperature": 1.0, "alpha": 0.5,
                                    "val_accuracy": 0.88},
                                   {"loss": "kd", "temperature": 4.0, "alpha": 0.5,
                                    "val_accuracy": 0.90}]}}


def test_gate_min_distillation_gain_is_a_run_level_check():
    ok = _report_with(BLOCK, {"min_distillation_gain_pp": -1.0, "max_accuracy_drop": 5.0})
    assert ok["gate"]["passed"]
    assert ok["gate"]["thresholds"]["min_distillation_gain_pp"] == -1.0
    run = [c for c in ok["gate"]["checks"] if c["target"] == "run"]
    assert [(c["check"], c["outcome"], c["value"]) for c in run] == \
        [("distillation_gain", "passed", -0.5)]
    bad = _report_with(BLOCK, {"min_distillation_gain_pp": 0.0})
    assert bad["gate"]["violations"] == [
        "run: distillation gain -0.50 pp < +0.00 pp (distilled vs hard-label student, "
        "test split)"]
    # Not judged per target, and skipped (not passed) when no baseline ran.
    assert judge([target_entry()], {"min_distillation_gain_pp": 0.0})["checks"][-1][
        "outcome"] == "skipped"
    assert all(c["check"] != "distillation_gain" or c["target"] == "run"
               for c in bad["gate"]["checks"])
    # Re-judging a saved report reads its own threshold, and an override wins.
    assert not rejudge(bad)["passed"]
    assert rejudge(bad, {"min_distillation_gain_pp": -3.0})["passed"]


def test_markdown_and_html_say_which_student_was_kept():
    report = _report_with(BLOCK, {"min_distillation_gain_pp": 0.0})
    md = render_markdown(report)
    assert "## Distillation" in md
    assert "Carried forward: the **hard-label** student" in md
    assert "distilled 90.00 % vs hard-label 92.00 % (-2.00 pp)" in md
    assert "| kd | 4 | 0.5 | 90.00 % | chosen |" in md
    assert "| run | distillation_gain | failed | -0.5 | 0 |" in md
    page = _distillation_html(report)
    assert "Carried forward: the hard-label student" in page and "<td class=n>88.0 %</td>" in page
    assert "Distillation gain over the hard-label baseline: -0.50 pp" in page
    # Without the block the section still gives the student's gain, but names no choice.
    assert "Carried forward" not in _distillation_html(make_report())
    assert _distillation_html({"targets": []}) == ""


def test_full_run_reports_the_distillation_block_and_judges_the_gain(write_recipe, tmp_path):
    recipe = load_recipe(write_recipe({
        "stages": {"distill": {"baseline": True, "epochs": 2}},
        "gate": {"min_distillation_gain_pp": -100.0}}))
    out = tmp_path / "run"
    Pipeline(recipe, out).run()
    report = json.loads((out / "report.json").read_text())
    block = report["distillation"]
    assert block["kept"] in ("distilled", "baseline")
    kept = block[block["kept"]]
    assert kept["val_accuracy"] >= block["baseline"]["val_accuracy"]
    # The exported (unpruned) student is the carried-forward one.
    assert report["student"]["accuracy_fp32"] == pytest.approx(kept["test_accuracy"])
    assert report["gate"]["passed"]
    cases = {(c.get("classname"), c.get("name"))
             for c in ET.parse(out / "junit.xml").getroot().iter("testcase")}
    assert ("edgecompress.run", "distillation_gain") in cases
    assert "## Distillation" in (out / "report.md").read_text()
    html_path = out / "report.html"
    if html_path.is_file():
        assert "<h2>Distillation</h2>" in html_path.read_text()
