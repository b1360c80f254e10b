"""The image family's teacher steps (the ``finetune`` stage, :class:`~edgecompress.stages.teacher.
TeacherStage`): adapt the given (pretrained or freshly initialised) model into the teacher.

The head is replaced when the task's class count differs; the backbone can start frozen and be
unfrozen block by block from the top (layer-wise unfreezing, as in ULMFiT), at a low learning rate,
with early stopping on the validation split and the best checkpoint kept. With the stage disabled
the teacher is used as given (it must already fit the data).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import nn

from edgecompress.recipe import recipe_to_dict
from edgecompress.stages.augment import random_shift
from edgecompress.stages.common import build_teacher_arch, save_state, spec_files
from edgecompress.stages.teacher import TeacherSteps
from edgecompress.training import accuracy, train

logger = logging.getLogger(__name__)


class ImageTeacherSteps(TeacherSteps):
    """The image family's teacher: the recipe's model with its head fitted to the classes,
    fine-tuned with layer-wise unfreezing; ``finetune/teacher.pt``."""

    def config(self) -> dict[str, Any]:
        raw = recipe_to_dict(self.ctx.recipe)
        return {"teacher": raw["teacher"], "finetune": raw["stages"]["finetune"],
                "seed": raw["seed"]}

    def inputs(self) -> dict[str, Path]:
        ctx = self.ctx
        return {"dataset": ctx.run_dir / "data" / "dataset.json",
                **spec_files(ctx.recipe.teacher, "teacher")}

    def build(self) -> tuple[nn.Module, dict[str, Any]]:
        model, head = build_teacher_arch(self.ctx)
        self.head = head
        return model, {"head": head, "trained": self.ctx.recipe.stages.finetune.enabled}

    def finetune(self, model: nn.Module) -> dict[str, Any]:
        ctx, cfg = self.ctx, self.ctx.recipe.stages.finetune
        if not cfg.enabled:
            return {}
        bundle = ctx.bundle
        groups = _freeze_plan(model, self.head, cfg.freeze_backbone)

        def unfreeze(epoch: int) -> None:
            if not cfg.freeze_backbone or cfg.unfreeze_every is None:
                return
            count = min(len(groups), epoch // cfg.unfreeze_every)
            for group in groups[len(groups) - count:]:
                for p in group:
                    p.requires_grad_(True)

        def loss_fn(module: nn.Module, xb, yb, _idx):
            if cfg.augment == "shift":
                xb = random_shift(xb)
            return F.cross_entropy(module(xb), yb, label_smoothing=cfg.label_smoothing)

        result = train(model, model, loss_fn, x_train=bundle.train.x, y_train=bundle.train.y,
                       x_val=bundle.val.x, y_val=bundle.val.y, epochs=cfg.epochs, lr=cfg.lr,
                       weight_decay=cfg.weight_decay, batch_size=cfg.batch_size,
                       patience=cfg.patience, seed=ctx.recipe.seed, dist_info=ctx.dist,
                       desc="finetune", on_epoch_start=unfreeze)
        for p in model.parameters():
            p.requires_grad_(True)
        return {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                "history": result.history}

    def score(self, model: nn.Module) -> dict[str, Any]:
        bundle, device = self.ctx.bundle, self.ctx.dist.device
        return {"val_accuracy": accuracy(model, bundle.val.x, bundle.val.y, device),
                "test_accuracy": accuracy(model, bundle.test.x, bundle.test.y, device)}

    def save(self, model: nn.Module, out_dir: Path) -> dict[str, Path]:
        return {"teacher": save_state(model, out_dir / "teacher.pt")}


def _freeze_plan(model: nn.Module, head: str, freeze_backbone: bool) -> list[list[nn.Parameter]]:
    """Freeze everything but the head when asked; return the backbone's groups for unfreezing."""
    from edgecompress.models import backbone_groups

    groups = backbone_groups(model, head)
    if freeze_backbone:
        for group in groups:
            for p in group:
                p.requires_grad_(False)
    return groups
