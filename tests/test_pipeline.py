"""The pipeline end to end on a tiny recipe: report contract, resume, force, run-dir ownership,
crash safety (a run killed during distillation resumes), and torchrun DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from edgecompress.errors import ConfigError, RunDirError
from edgecompress.pipeline import Pipeline
from edgecompress.recipe import load_recipe
from tests.conftest import run_cli

STAGES = ["data", "finetune", "distill", "prune", "qat", "export", "bench", "report"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One tiny run through the CLI, shared by the tests that only read it."""
    import yaml

    from tests.conftest import TINY_RECIPE

    base = tmp_path_factory.mktemp("shared")
    recipe = base / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(TINY_RECIPE))
    out = base / "run"
    result = run_cli("run", str(recipe), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return recipe, out, result


def test_report_follows_the_schema(finished_run):
    _, out, result = finished_run
    report = json.loads((out / "report.json").read_text())
    assert report["schema_version"] == 1
    for key in ("recipe", "environment", "dataset", "teacher", "student", "stages", "targets",
                "gate"):
        assert key in report
    assert report["environment"]["packages"]["torch"].startswith("2.13")
    assert report["teacher"]["params"] > report["student"]["params"] > 0
    assert 0.0 <= report["student"]["accuracy_fp32"] <= 1.0
    (target,) = report["targets"]
    assert target["status"] == "ok"
    assert target["latency_ms"]["runs"] == 50 and target["latency_ms"]["threads"] == 1
    assert target["latency_ms"]["p50"] <= target["latency_ms"]["p90"] <= target["latency_ms"]["p99"]
    assert target["teacher_latency_ms"]["p50"] > 0
    # Issue 18: teacher and student are timed in interleaved rounds and the speedup is the
    # median of the same-round ratios (not the ratio of the two p50s).
    import numpy as np

    t_rounds, s_rounds = (target[k]["round_p50_ms"] for k in ("teacher_latency_ms", "latency_ms"))
    assert len(t_rounds) == len(s_rounds) == target["timing"]["rounds"] > 1
    assert target["speedup_vs_teacher"] == pytest.approx(
        float(np.median(np.asarray(t_rounds) / np.asarray(s_rounds))), rel=1e-4)
    assert target["accuracy_drop"] == pytest.approx(
        100 * (target["teacher_accuracy"] - target["accuracy"]), abs=1e-3)
    # The FP32 engine must agree with PyTorch.
    assert target["parity"]["top1_agreement"] >= 0.99
    assert (out / target["artifact"]).is_file()
    assert "| cpu | onnxruntime | fp32 | ok |" in (out / "report.md").read_text()
    assert "report:" in result.stdout
    # Issue 5: SNR, recorded input shape and environment, raw samples kept out of report.json
    # but in bench/results.json, report.html with plots, junit.xml with the gate's testcases.
    assert target["parity"]["snr_db"] > 60
    assert target["latency_ms"]["input_shape"] == [1, 1, 8, 8]
    assert "samples_ms" not in target
    assert report["environment"]["cpu"]["model"] and "flags" in report["environment"]["cpu"]
    results = json.loads((out / "bench" / "results.json").read_text())
    samples = results["targets"][0]["samples_ms"]
    assert len(samples["student"]) == len(samples["teacher"]) == 50
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 3
    import xml.etree.ElementTree as ET

    cases = [c.get("name") for c in ET.parse(out / "junit.xml").getroot().iter("testcase")]
    assert cases == ["status"]  # the tiny recipe sets no threshold
    assert report["gate"]["passed"] and report["gate"]["checks"][0]["outcome"] == "passed"


def test_every_stage_has_a_manifest(finished_run):
    _, out, _ = finished_run
    for name in STAGES:
        manifest = json.loads((out / name / "stage.json").read_text())
        assert manifest["config_hash"] and manifest["versions"]["torch"].startswith("2.13")
        for rel, digest in manifest["outputs"].values():
            assert (out / rel).is_file() and len(digest) == 64
    assert not list(out.rglob("*.tmp*")), "temporary files left behind"


def test_rerun_skips_everything(finished_run):
    recipe, out, _ = finished_run
    status = Pipeline(load_recipe(recipe), out).run()
    assert status == {name: "skipped" for name in STAGES}


def test_changes_rerun_only_what_they_affect(write_recipe, tmp_path):
    out = tmp_path / "run"
    first = Pipeline(load_recipe(write_recipe()), out).run()
    assert set(first.values()) == {"ran"}
    # More distillation epochs: data and finetune stay, distill and later rerun.
    changed = Pipeline(load_recipe(write_recipe({"stages": {"distill": {"epochs": 4}}})),
                       out).run()
    # Pruning and QAT are disabled: their no-op stages do not depend on distillation.
    assert changed == {"data": "skipped", "finetune": "skipped", "distill": "ran",
                       "prune": "skipped", "qat": "skipped", "export": "ran", "bench": "ran",
                       "report": "ran"}
    # --force export reruns export and everything after it.
    forced = Pipeline(load_recipe(write_recipe({"stages": {"distill": {"epochs": 4}}})),
                      out).run(force="export")
    assert [k for k, v in forced.items() if v == "ran"] == ["export", "bench", "report"]
    # A damaged artifact is detected by its hash and rebuilt, never trusted.
    student = out / "distill" / "student.pt"
    student.write_bytes(student.read_bytes()[:50])
    healed = Pipeline(load_recipe(write_recipe({"stages": {"distill": {"epochs": 4}}})),
                      out).run()
    assert healed["finetune"] == "skipped" and healed["distill"] == "ran"


def test_unknown_force_stage(write_recipe, tmp_path):
    with pytest.raises(ConfigError, match="unknown stage"):
        Pipeline(load_recipe(write_recipe()), tmp_path / "x").run(force="quantize")


def test_refuses_another_runs_directory(finished_run, write_recipe, tmp_path):
    _, out, _ = finished_run
    other = load_recipe(write_recipe({"seed": 1}))
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(RunDirError, match="different run"):
        Pipeline(other, out).run()
    assert sorted(p.name for p in out.iterdir()) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not an edgecompress run directory"):
        Pipeline(other, foreign).run(overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_overwrite_replaces_another_run(write_recipe, tmp_path):
    out = tmp_path / "run"
    Pipeline(load_recipe(write_recipe({"stages": {"distill": {"enabled": False}}})), out).run()
    status = Pipeline(load_recipe(write_recipe({"seed": 3})), out).run(overwrite=True)
    assert set(status.values()) == {"ran"}
    assert json.loads((out / "recipe.json").read_text())["seed"] == 3


def test_killed_during_distillation_resumes(write_recipe, tmp_path):
    recipe = write_recipe({"stages": {"distill": {"epochs": 60, "patience": 60}}})
    out = tmp_path / "run"
    env = {**os.environ, "CI": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "edgecompress", "run", str(recipe), "--out",
                             str(out)], stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    deadline = time.monotonic() + 300
    for line in proc.stderr:
        seen.append(line)
        if "distill[student] epoch 2/" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert any("distill[student] epoch 2/" in line for line in seen), "".join(seen[-20:])
    assert (out / "finetune" / "stage.json").is_file()
    assert not (out / "distill" / "stage.json").is_file()
    # Resume with a shorter schedule so the test stays quick; finetune must not rerun.
    recipe = write_recipe({"stages": {"distill": {"epochs": 3}}})
    result = run_cli("run", str(recipe), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[finetune] up to date, skipped" in result.stderr
    assert "[data] up to date, skipped" in result.stderr
    assert "[distill] running" in result.stderr
    assert json.loads((out / "report.json").read_text())["targets"][0]["status"] == "ok"


def test_torchrun_two_processes(write_recipe, tmp_path):
    # Each rank sees half the data per epoch, so give it a few more epochs than the 1-process runs.
    recipe = write_recipe({"stages": {"finetune": {"epochs": 8}, "distill": {"epochs": 6}}})
    out = tmp_path / "run"
    env = {**os.environ, "CI": "true", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--standalone", "-m", "edgecompress", "run", str(recipe), "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    distill = json.loads((out / "distill" / "stage.json").read_text())
    assert distill["metrics"]["world_size"] == 2
    finetune = json.loads((out / "finetune" / "stage.json").read_text())
    assert finetune["metrics"]["world_size"] == 2
    assert finetune["metrics"]["test_accuracy"] > 0.5
    assert distill["metrics"]["student"]["test_accuracy"] > 0.3
    report = json.loads((out / "report.json").read_text())
    assert report["targets"][0]["status"] == "ok"
