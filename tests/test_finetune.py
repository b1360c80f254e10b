"""finetune stage: head replacement, frozen backbone, layer-wise unfreezing, pass-through."""

from __future__ import annotations

from pathlib import Path

import torch

from edgecompress.models import build_builtin
from edgecompress.pipeline import Pipeline, read_stage_manifest
from edgecompress.recipe import load_recipe
from edgecompress.stages.augment import mixup, random_shift
from edgecompress.stages.data import DataStage
from edgecompress.stages.teacher import TeacherStage


def _pretrained(tmp_path: Path, num_classes: int) -> Path:
    """A 'pretrained' builtin teacher with a different class count than the data (10)."""
    torch.manual_seed(0)
    model = build_builtin("resnet", num_classes=num_classes, in_channels=1, width=0.25, depth=1)
    path = tmp_path / "pretrained.pt"
    torch.save(model.state_dict(), path)
    return path


def _run(write_recipe, tmp_path, finetune, num_classes=5):
    weights = _pretrained(tmp_path, num_classes)
    factory = tmp_path / "fac.py"
    factory.write_text("from edgecompress.models import build_builtin\n"
                       "def net(num_classes):\n"
                       "    return build_builtin('resnet', num_classes=num_classes, in_channels=1,"
                       " width=0.25, depth=1)\n")
    recipe = load_recipe(write_recipe({
        "teacher": {"kind": "factory", "factory": f"{factory}:net",
                    "kwargs": {"num_classes": num_classes}, "weights": str(weights)},
        "stages": {"finetune": finetune}}))
    out = tmp_path / "run"
    Pipeline(recipe, out, stages=[DataStage(), TeacherStage("finetune")]).run()
    before = torch.load(weights, weights_only=True)
    after = torch.load(out / "finetune" / "teacher.pt", weights_only=True)
    return before, after, read_stage_manifest(out, "finetune")["metrics"]


def test_head_replaced_and_backbone_frozen(write_recipe, tmp_path):
    before, after, metrics = _run(write_recipe, tmp_path,
                                  {"freeze_backbone": True, "epochs": 3, "lr": 0.02})
    assert metrics["head"] == "classifier"
    assert after["classifier.weight"].shape == (10, before["classifier.weight"].shape[1])
    assert torch.equal(before["stem.0.weight"], after["stem.0.weight"])
    assert torch.equal(before["stage3.0.conv2.weight"], after["stage3.0.conv2.weight"])
    assert metrics["test_accuracy"] > 0.2  # the new head learned something on frozen features


def test_layerwise_unfreezing_trains_the_top_first(write_recipe, tmp_path):
    before, after, _ = _run(write_recipe, tmp_path, {"freeze_backbone": True,
                                                    "unfreeze_every": 1, "epochs": 2})
    # Epoch 0: head only. Epoch 1: the top block group (pool has no params -> stage3) unfrozen.
    assert not torch.equal(before["stage3.0.conv2.weight"], after["stage3.0.conv2.weight"])
    assert torch.equal(before["stem.0.weight"], after["stem.0.weight"])


def test_disabled_finetune_keeps_the_given_weights(write_recipe, tmp_path):
    before, after, metrics = _run(write_recipe, tmp_path, {"enabled": False}, num_classes=10)
    assert metrics["trained"] is False
    for key, value in before.items():
        assert torch.equal(value, after[key]), key


def test_random_shift_moves_content_within_the_pad():
    x = torch.zeros(64, 1, 8, 8)
    x[:, 0, 4, 4] = 1.0
    y = random_shift(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    assert torch.all(y.sum(dim=(1, 2, 3)) == 1.0)  # the pixel stays inside (pad is 1 px)
    positions = {tuple(torch.nonzero(img[0])[0].tolist()) for img in y}
    assert len(positions) > 1 and all(abs(r - 4) <= 1 and abs(c - 4) <= 1 for r, c in positions)


def test_mixup_blends_pairs():
    x = torch.arange(4, dtype=torch.float32).reshape(4, 1, 1, 1)
    mixed, perm, lam = mixup(x, generator=torch.Generator().manual_seed(1))
    assert 0.0 <= lam <= 1.0
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[perm])
