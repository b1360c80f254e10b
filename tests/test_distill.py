"""distill stage paths beyond the default: feature matching, augmentation, baseline, disabled."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgecompress.errors import ConfigError
from edgecompress.pipeline import Pipeline, read_stage_manifest
from edgecompress.recipe import DistillConfig, load_recipe
from edgecompress.stages.data import DataStage
from edgecompress.stages.distill import augmented_loss
from edgecompress.stages.student import DistillStage
from edgecompress.stages.teacher import TeacherStage


def _distill(write_recipe, tmp_path, distill):
    recipe = load_recipe(write_recipe({"stages": {"distill": distill}}))
    out = tmp_path / "run"
    Pipeline(recipe, out, stages=[DataStage(), TeacherStage("finetune"), DistillStage()]).run()
    return out, read_stage_manifest(out, "distill")["metrics"]


def test_feature_matching_and_baseline(write_recipe, tmp_path):
    out, metrics = _distill(write_recipe, tmp_path, {
        "features": [{"teacher": "stage3", "student": "stage3", "weight": 0.5},
                     {"teacher": "stage2", "student": "stage2"}],
        "baseline": True, "epochs": 3})
    assert metrics["student"]["alpha"] == DistillConfig().alpha
    assert metrics["baseline"]["alpha"] == 0.0
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


@pytest.mark.parametrize("augment", ["none", "shift", "shift+mixup", "cutmix"])
def test_augmented_distillation_trains(write_recipe, tmp_path, augment):
    # 5 epochs: at the default alpha 0.5 / T 2, shift+mixup is still near 0.3 after 3.
    _, metrics = _distill(write_recipe, tmp_path, {"augment": augment, "epochs": 5})
    assert metrics["student"]["test_accuracy"] > 0.3
    assert len(metrics["student"]["history"]) == 5


def test_disabled_distillation_trains_on_labels_only(write_recipe, tmp_path):
    _, metrics = _distill(write_recipe, tmp_path, {"enabled": False})
    assert metrics["student"]["alpha"] == 0.0 and "baseline" not in metrics


def test_unknown_feature_layer_fails_before_anything_runs(write_recipe, tmp_path):
    with pytest.raises(ConfigError, match="student has no layer 'stage9'"):
        _distill(write_recipe, tmp_path,
                 {"features": [{"teacher": "stage3", "student": "stage9"}]})
    assert not (tmp_path / "run").exists()


def test_default_keeps_hard_labels_and_matches_functions_on_mixed_batches():
    cfg = DistillConfig()
    assert 0 < cfg.alpha < 1  # the hard-label term keeps a weight by default
    assert cfg.augment == "mixup" and cfg.patience < cfg.epochs


class _Recorder(torch.nn.Module):
    """A fixed linear 'teacher' that remembers what it was shown."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []
        self.fc = torch.nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return self.fc(x.flatten(1))


def test_mixup_teacher_labels_the_mixed_batch_and_baseline_gets_mixed_labels():
    torch.manual_seed(0)
    student, teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)), _Recorder()
    x, y = torch.randn(8, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    torch.manual_seed(1)
    loss = augmented_loss(student, teacher, x, y, "mixup", alpha=0.5, temperature=2.0)
    # Replay the same random draws: the teacher saw the mixed batch, not the clean one.
    torch.manual_seed(1)
    lam = float(torch.distributions.Beta(0.4, 0.4).sample())
    perm = torch.randperm(8)
    mixed = lam * x + (1 - lam) * x[perm]
    assert len(teacher.seen) == 1 and torch.allclose(teacher.seen[0], mixed)
    assert not torch.allclose(mixed, x)
    s_logits, t_logits = student(mixed), teacher.fc(mixed.flatten(1))
    soft = F.kl_div(F.log_softmax(s_logits / 2, 1), F.softmax(t_logits / 2, 1),
                    reduction="batchmean") * 4
    hard = lam * F.cross_entropy(s_logits, y) + (1 - lam) * F.cross_entropy(s_logits, y[perm])
    assert loss.item() == pytest.approx((0.5 * soft + 0.5 * hard).item(), rel=1e-5)
    # The hard-label baseline: the same mixed batch, the labels mixed by the same lambda.
    torch.manual_seed(1)
    base = augmented_loss(student, None, x, y, "mixup", alpha=0.0, temperature=2.0)
    assert base.item() == pytest.approx(hard.item(), rel=1e-5)


def test_feature_terms_count_under_augmentation():
    """With mixup on (the default), a feature weight must change training: the feature term is
    computed on the same mixed batch as the logits (it was once silently dropped)."""
    from types import SimpleNamespace

    from edgecompress.distributed import init_distributed
    from edgecompress.models.tiny import build_builtin
    from edgecompress.recipe import FeatureMatch
    from edgecompress.stages.distill import Setting, train_student
    from edgecompress.training import seed_everything

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(96, 1, 8, 8, generator=gen).numpy()
    y = torch.randint(0, 4, (96,), generator=gen).numpy()
    data = SimpleNamespace(train=SimpleNamespace(x=x[:64], y=y[:64]),
                           val=SimpleNamespace(x=x[64:], y=y[64:]))
    seed_everything(0)
    teacher = build_builtin("resnet", num_classes=4, in_channels=1, width=0.5, depth=1).eval()
    cfg = DistillConfig(epochs=1, batch_size=32)
    assert cfg.augment == "mixup"
    weights = []
    for weight in (0.0, 10.0):
        seed_everything(1)
        student = build_builtin("resnet", num_classes=4, in_channels=1, width=0.25, depth=1)
        train_student(teacher, student, data, cfg, Setting("kd", 2.0, 0.5), seed=1,
                      dist_info=init_distributed("cpu"), role="t",
                      features=[FeatureMatch(teacher="stage3", student="stage3", weight=weight)])
        weights.append(student.state_dict())
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
