"""The pipeline's report stage with a profile-based target that cannot run on this machine."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import yaml

from edgecompress.pipeline import Pipeline
from edgecompress.recipe import load_recipe
from tests.conftest import REPO


def test_profile_target_on_the_wrong_machine_is_skipped(write_recipe, tmp_path):
    raw = yaml.safe_load((REPO / "targets" / "x86-avx2.yaml").read_text())
    raw.update(name="future-cpu", requires={"cpu_flags": ["no_such_isa"]},
               budgets={"max_latency_p50_ms": 1000.0})
    profile = tmp_path / "future-cpu.yaml"
    profile.write_text(yaml.safe_dump(raw))
    recipe = write_recipe({
        "targets": [{"profile": str(profile), "runs": 50, "warmup": 2},
                    {"name": "cpu", "backend": "onnxruntime", "warmup": 2, "runs": 50,
                     "max_seconds": 1e-6, "min_runs": 20}],
        "gate": {"max_accuracy_drop": 50.0, "max_size_bytes": 10**9}})
    out = tmp_path / "run"
    Pipeline(load_recipe(recipe), out).run()
    report = json.loads((out / "report.json").read_text())
    skipped, ran = report["targets"]
    assert skipped["name"] == "future-cpu" and skipped["status"] == "skipped"
    assert skipped["reason"] == "instruction set missing: no_such_isa"
    assert ran["status"] == "ok"
    # The (1 us) time budget cut the timed loop to min_runs.
    assert ran["latency_ms"]["runs"] == 20 and ran["latency_ms"]["stopped_by"] == "time_budget"
    assert report["gate"]["passed"]
    assert report["gate"]["target_thresholds"] == {"future-cpu": {"max_latency_p50_ms": 1000.0}}
    cases = {(c.get("classname"), c.get("name")): c
             for c in ET.parse(out / "junit.xml").getroot().iter("testcase")}
    assert set(cases) == {("edgecompress.future-cpu", "status"), ("edgecompress.cpu", "status"),
                          ("edgecompress.cpu", "accuracy_drop"), ("edgecompress.cpu", "size")}
    assert cases[("edgecompress.future-cpu", "status")].find("skipped") is not None
    assert "skipped: instruction set missing" in (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    # The story sections a real run produces (issue 12 item 5), accuracy in percent.
    for heading in ("Model ladder", "Distillation", "Environment", "Targets", "Gate"):
        assert f"<h2>{heading}</h2>" in page, heading
    assert f"{100 * ran['accuracy']:.1f} %" in page
    # The image family's report records the libraries that shape its artifacts.
    assert report["task"] == "image-classification"
    assert {"torch-pruning", "torchao"} <= set(report["environment"]["packages"])
