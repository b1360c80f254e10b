"""finetune stage: adapt the given (pretrained or freshly initialised) model into the teacher.

The head is replaced when the task's class count differs; the backbone can start frozen and be
unfrozen block by block from the top (layer-wise unfreezing, as in ULMFiT), at a low learning rate,
with early stopping on the validation split and the best checkpoint kept. With the stage disabled
the teacher is used as given (it must already fit the data).
"""

from __future__ import annotations

import logging
from typing import Any

import torch.nn.functional as F
from torch import nn

from edgecompress.recipe import recipe_to_dict
from edgecompress.stages.augment import random_shift
from edgecompress.stages.base import Context, Stage, StageResult
from edgecompress.stages.common import build_teacher_arch, save_state, spec_files
from edgecompress.training import accuracy, seed_everything, train

logger = logging.getLogger(__name__)


class FinetuneStage(Stage):
    """Produces ``finetune/teacher.pt``: the teacher every later stage distils from."""

    name = "finetune"
    distributed = True

    def config(self, ctx: Context) -> dict[str, Any]:
        raw = recipe_to_dict(ctx.recipe)
        return {"teacher": raw["teacher"], "finetune": raw["stages"]["finetune"],
                "seed": raw["seed"]}

    def inputs(self, ctx: Context) -> dict[str, Any]:
        return {"dataset": ctx.run_dir / "data" / "dataset.json",
                **spec_files(ctx.recipe.teacher, "teacher")}

    def run(self, ctx: Context) -> StageResult:
        cfg = ctx.recipe.stages.finetune
        seed_everything(ctx.recipe.seed)
        model, head = build_teacher_arch(ctx)
        bundle = ctx.bundle
        metrics: dict[str, Any] = {"head": head, "trained": cfg.enabled}
        if cfg.enabled:
            groups = _freeze_plan(model, head, cfg.freeze_backbone)

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
            metrics.update(best_epoch=result.best_epoch, epochs_run=result.epochs_run,
                           history=result.history, world_size=ctx.dist.world_size)
        model.eval()
        metrics["val_accuracy"] = accuracy(model, bundle.val.x, bundle.val.y, ctx.dist.device)
        metrics["test_accuracy"] = accuracy(model, bundle.test.x, bundle.test.y, ctx.dist.device)
        out = ctx.stage_dir(self.name) / "teacher.pt"
        if ctx.dist.is_main:
            save_state(model.cpu(), out)
            logger.info("teacher: test accuracy %.4f", metrics["test_accuracy"])
        return StageResult(outputs={"teacher": out}, metrics=metrics)


def _freeze_plan(model: nn.Module, head: str, freeze_backbone: bool) -> list[list[nn.Parameter]]:
    """Freeze everything but the head when asked; return the backbone's groups for unfreezing."""
    from edgecompress.models import backbone_groups

    groups = backbone_groups(model, head)
    if freeze_backbone:
        for group in groups:
            for p in group:
                p.requires_grad_(False)
    return groups
