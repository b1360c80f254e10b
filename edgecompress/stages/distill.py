"""distill stage: train the student from the frozen teacher (and, as a control, on labels only).

Loss = alpha * T^2 * KL(p_teacher || p_student) + (1 - alpha) * CE(y), plus optional feature
matching (MSE) terms through learned projections. The teacher stays in eval mode without gradients.
The hard-label baseline uses the same student initialisation, epochs and optimiser, so the
comparison isolates what the teacher adds. Runs unchanged under ``torchrun`` (DDP).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from edgecompress.recipe import recipe_to_dict
from edgecompress.stages.augment import mixup, random_shift
from edgecompress.stages.base import Context, Stage, StageResult
from edgecompress.stages.common import build_student, load_teacher, save_state, spec_files
from edgecompress.stages.losses import (
    FeatureTaps,
    distillation_loss,
    feature_mse,
    make_projection,
)
from edgecompress.training import accuracy, predict_logits, seed_everything, train

logger = logging.getLogger(__name__)


class StudentWithProjections(nn.Module):
    """The student plus its feature projections, trained (and DDP-wrapped) as one module."""

    def __init__(self, student: nn.Module, projections: dict[str, nn.Module]) -> None:
        super().__init__()
        self.student = student
        self.projections = nn.ModuleDict({k.replace(".", "__"): v for k, v in projections.items()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)


class DistillStage(Stage):
    """Produces ``distill/student.pt`` (and ``distill/baseline.pt`` when the baseline is on)."""

    name = "distill"
    distributed = True

    def config(self, ctx: Context) -> dict[str, Any]:
        raw = recipe_to_dict(ctx.recipe)
        return {"student": raw["student"], "distill": raw["stages"]["distill"],
                "seed": raw["seed"]}

    def inputs(self, ctx: Context) -> dict[str, Any]:
        return {"teacher": ctx.run_dir / "finetune" / "teacher.pt",
                **spec_files(ctx.recipe.student, "student")}

    def run(self, ctx: Context) -> StageResult:
        cfg = ctx.recipe.stages.distill
        device = ctx.dist.device
        bundle = ctx.bundle
        teacher = load_teacher(ctx).to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        out_dir = ctx.stage_dir(self.name)
        outputs: dict[str, Any] = {}
        metrics: dict[str, Any] = {"world_size": ctx.dist.world_size, "device": str(device)}

        runs = [("student", cfg.alpha if cfg.enabled else 0.0, cfg.features if cfg.enabled else [])]
        if cfg.enabled and cfg.baseline:
            runs.append(("baseline", 0.0, []))
        for role, alpha, features in runs:
            seed_everything(ctx.recipe.seed)
            student = build_student(ctx).to(device)
            result = self._train_one(ctx, teacher, student, alpha, features, role)
            acc = accuracy(student, bundle.test.x, bundle.test.y, device)
            metrics[role] = {"test_accuracy": acc,
                             "val_accuracy": result.best_val_accuracy,
                             "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                             "alpha": alpha, "history": result.history}
            if ctx.dist.is_main:
                outputs[role] = save_state(student.cpu(), out_dir / f"{role}.pt")
                logger.info("%s: test accuracy %.4f", role, acc)
        metrics["teacher_test_accuracy"] = accuracy(teacher, bundle.test.x, bundle.test.y, device)
        if "baseline" in metrics:
            gain = metrics["student"]["test_accuracy"] - metrics["baseline"]["test_accuracy"]
            metrics["distillation_gain_pp"] = round(100 * gain, 3)
        if not ctx.dist.is_main:
            outputs = {"student": out_dir / "student.pt"}
        return StageResult(outputs=outputs, metrics=metrics)

    def _train_one(self, ctx: Context, teacher: nn.Module, student: nn.Module, alpha: float,
                   features: list, role: str):
        cfg = ctx.recipe.stages.distill
        device = ctx.dist.device
        bundle = ctx.bundle
        teacher_logits = None
        t_taps = s_taps = None
        projections: dict[str, nn.Module] = {}
        if features:
            t_taps = FeatureTaps(teacher, [f.teacher for f in features], "teacher")
            s_taps = FeatureTaps(student, [f.student for f in features], "student")
            probe = torch.from_numpy(bundle.train.x[:2]).to(device)
            with torch.no_grad():
                teacher(probe)
                was = student.training
                student.eval()
                student(probe)
                student.train(was)
            for f in features:
                projections[f.student] = make_projection(s_taps.outputs[f.student],
                                                         t_taps.outputs[f.teacher]).to(device)
        elif alpha > 0:
            # No feature terms: the teacher's logits never change, so compute them once.
            teacher_logits = torch.from_numpy(
                predict_logits(teacher, bundle.train.x, device)).to(device)
        trainable = StudentWithProjections(student, projections)

        def loss_fn(module: nn.Module, xb: torch.Tensor, yb: torch.Tensor, idx: torch.Tensor):
            aug = cfg.augment
            if aug != "none":
                return augmented_loss(module, teacher if alpha > 0 else None, xb, yb, aug,
                                      alpha=alpha, temperature=cfg.temperature)
            logits = module(xb)
            if features:
                with torch.no_grad():
                    t_logits = teacher(xb)
                loss = distillation_loss(logits, t_logits, yb, alpha=alpha,
                                         temperature=cfg.temperature)
                for f in features:
                    proj = trainable.projections[f.student.replace(".", "__")]
                    loss = loss + f.weight * feature_mse(proj(s_taps.outputs[f.student]),
                                                         t_taps.outputs[f.teacher].detach())
                return loss
            t_logits = teacher_logits[idx.to(device)] if teacher_logits is not None else None
            return distillation_loss(logits, t_logits, yb, alpha=alpha,
                                     temperature=cfg.temperature)

        try:
            return train(student, trainable, loss_fn, x_train=bundle.train.x,
                         y_train=bundle.train.y, x_val=bundle.val.x, y_val=bundle.val.y,
                         epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay,
                         batch_size=cfg.batch_size, patience=cfg.patience, seed=ctx.recipe.seed,
                         dist_info=ctx.dist, desc=f"distill[{role}]")
        finally:
            for taps in (t_taps, s_taps):
                if taps is not None:
                    taps.remove()



def augmented_loss(module: nn.Module, teacher: nn.Module | None, xb: torch.Tensor,
                   yb: torch.Tensor, augment: str, *, alpha: float,
                   temperature: float) -> torch.Tensor:
    """Distillation (or hard-label) loss on an augmented batch the teacher labels afresh."""
    if "shift" in augment:
        xb = random_shift(xb)
    perm, lam = None, 1.0
    if "mixup" in augment:
        xb, perm, lam = mixup(xb)
    logits = module(xb)
    t_logits = None
    if teacher is not None:
        with torch.no_grad():
            t_logits = teacher(xb)
    loss = distillation_loss(logits, t_logits, yb, alpha=alpha, temperature=temperature)
    if perm is not None:
        loss = lam * loss + (1 - lam) * distillation_loss(
            logits, t_logits, yb[perm], alpha=alpha, temperature=temperature)
    return loss
