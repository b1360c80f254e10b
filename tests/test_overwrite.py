"""--overwrite deletes only what edgecompress created in a run directory."""

from __future__ import annotations

import json

from edgecompress.pipeline import clear_run_dir


def test_overwrite_keeps_what_the_tool_did_not_create(tmp_path, caplog):
    run = tmp_path / "run"
    (run / "distill").mkdir(parents=True)
    (run / "engines" / "cpu").mkdir(parents=True)
    (run / "mydata").mkdir()
    for name in ("run.json", "recipe.json", "report.json", "report.md", "junit.xml"):
        (run / name).write_text("{}")
    (run / "distill" / "stage.json").write_text(json.dumps(
        {"outputs": {"cpu:artifact": ["engines/cpu/model.onnx", "0" * 64]}}))
    (run / "engines" / "cpu" / "model.onnx").write_bytes(b"x")
    (run / "notes.txt").write_text("mine")
    (run / "mydata" / "stage.json.bak").write_text("not a stage manifest")
    kept = clear_run_dir(run)
    assert kept == ["mydata", "notes.txt"]
    assert sorted(p.name for p in run.iterdir()) == ["mydata", "notes.txt"]
    assert (run / "notes.txt").read_text() == "mine"
    assert "kept what edgecompress did not create" in caplog.text and "notes.txt" in caplog.text
