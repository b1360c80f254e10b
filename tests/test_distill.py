"""distill stage paths beyond the default: feature matching, augmentation, baseline, disabled."""

from __future__ import annotations

import pytest

from edgecompress.errors import ConfigError
from edgecompress.pipeline import Pipeline, read_stage_manifest
from edgecompress.recipe import load_recipe
from edgecompress.stages.data import DataStage
from edgecompress.stages.distill import DistillStage
from edgecompress.stages.finetune import FinetuneStage


def _distill(write_recipe, tmp_path, distill):
    recipe = load_recipe(write_recipe({"stages": {"distill": distill}}))
    out = tmp_path / "run"
    Pipeline(recipe, out, stages=[DataStage(), FinetuneStage(), DistillStage()]).run()
    return out, read_stage_manifest(out, "distill")["metrics"]


def test_feature_matching_and_baseline(write_recipe, tmp_path):
    out, metrics = _distill(write_recipe, tmp_path, {
        "features": [{"teacher": "stage3", "student": "stage3", "weight": 0.5},
                     {"teacher": "stage2", "student": "stage2"}],
        "baseline": True, "epochs": 3})
    assert metrics["student"]["alpha"] == 0.9 and metrics["baseline"]["alpha"] == 0.0
    assert metrics["student"]["test_accuracy"] > 0.3
    assert metrics["distillation_gain_pp"] == pytest.approx(
        100 * (metrics["student"]["test_accuracy"] - metrics["baseline"]["test_accuracy"]),
        abs=1e-3)
    assert (out / "distill" / "student.pt").is_file()
    assert (out / "distill" / "baseline.pt").is_file()
    assert (out / "distill" / "distilled.pt").is_file()
    # The carried-forward student is never worse than the hard-label one on validation.
    assert metrics["final"]["val_accuracy"] >= metrics["baseline"]["val_accuracy"]
    assert metrics["distillation"]["kept"] == metrics["kept"]


@pytest.mark.parametrize("augment", ["shift", "shift+mixup", "cutmix"])
def test_augmented_distillation_trains(write_recipe, tmp_path, augment):
    _, metrics = _distill(write_recipe, tmp_path, {"augment": augment, "epochs": 3})
    assert metrics["student"]["test_accuracy"] > 0.3
    assert len(metrics["student"]["history"]) == 3


def test_disabled_distillation_trains_on_labels_only(write_recipe, tmp_path):
    _, metrics = _distill(write_recipe, tmp_path, {"enabled": False})
    assert metrics["student"]["alpha"] == 0.0 and "baseline" not in metrics


def test_unknown_feature_layer_fails_before_anything_runs(write_recipe, tmp_path):
    with pytest.raises(ConfigError, match="student has no layer 'stage9'"):
        _distill(write_recipe, tmp_path,
                 {"features": [{"teacher": "stage3", "student": "stage9"}]})
    assert not (tmp_path / "run").exists()
