"""The image family's prune steps (run by the shared :class:`PruneStage`): structured pruning
of the distilled student, recovered by distillation.

Loads ``distill/student.pt``, removes whole channels with torch-pruning's dependency graph in
``steps`` slices toward the recipe's channel ratio or MACs/params budget, and after each slice
fine-tunes the student against the frozen teacher (the same KD loss as the distill stage).
The result is saved as ``prune/student.pt2`` (``torch.export``, reloads without the model
class) plus ``prune/student_state.pt``. Disabled (the default), the stage does nothing and the
distilled student stays the final one. Runs unchanged under ``torchrun`` (DDP): every rank
prunes identically (same weights, same seeded batches), then trains its shard.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecompress.errors import ConfigError, ParityError
from edgecompress.recipe import PRUNE_TARGET_KEYS, PruneConfig, recipe_to_dict
from edgecompress.stages.base import Context
from edgecompress.stages.common import build_student, load_state, load_teacher, spec_files
from edgecompress.stages.losses import distillation_loss
from edgecompress.stages.student import PruneSteps
from edgecompress.training import accuracy, augments, predict_logits, train

logger = logging.getLogger(__name__)

PROGRAM_NAME = "student.pt2"
STATE_NAME = "student_state.pt"
#: Max abs logit difference accepted between the pruned module and its reloaded .pt2.
RELOAD_ATOL = 1e-4


def prune_target(cfg: PruneConfig):
    """The recipe's target as a :class:`~edgecompress.prune.pruner.PruneTarget`."""
    from edgecompress.prune.pruner import PruneTarget

    for key in PRUNE_TARGET_KEYS:
        if getattr(cfg, key) is not None:
            return PruneTarget(key, float(getattr(cfg, key)))
    raise ConfigError(f"stages.prune: set one of {', '.join(PRUNE_TARGET_KEYS)}")


def check_prune(ctx: Context, student: nn.Module) -> nn.Module | None:
    """Preflight: reject a prune section that cannot work, before anything trains.

    Checks that the student is an editable module, that every ignored layer exists, that
    something is left to prune, and that a budget is reachable with ``round_to``.

    Raises:
        ConfigError: Naming the ``stages.prune`` key at fault.
        BackendUnavailable: torch-pruning is not installed.
    """
    cfg = ctx.recipe.stages.prune
    if not cfg.enabled:
        return None
    kind = ctx.recipe.student.kind
    if kind in ("torchscript", "export"):
        raise ConfigError(f"stages.prune: a student of kind '{kind}' cannot be pruned (its "
                          "layers cannot be edited); use kind 'builtin' or 'factory'")
    from edgecompress.prune.pruner import smallest_reachable

    target = prune_target(cfg)
    example = torch.from_numpy(ctx.bundle.train.x[:1])
    lowest = smallest_reachable(student, example, target, cfg.round_to, cfg.ignored_layers)
    if target.is_budget and target.value < lowest:
        raise ConfigError(f"stages.prune.{target.key}: {target.value:g} is below the smallest "
                          f"reachable ratio {lowest:.3f} for this student (round_to "
                          f"{cfg.round_to}, every layer keeps >= 1/8 of its channels); raise "
                          "the budget or lower round_to")
    return _dry_run(student, example, target, cfg)


def _dry_run(student: nn.Module, example: torch.Tensor, target: Any, cfg: Any) -> nn.Module:
    """Prune a copy of the untrained student to the target and rebuild it as the qat stage will.

    A model whose pruned shapes the rebuild cannot reproduce (a layer that keeps its size in an
    attribute) or whose plan would empty a layer then fails here, before any training, instead
    of after the prune stage. The channels chosen do not matter here, so l2 scores stand in for
    gradient-based ones. Returns the rebuilt pruned copy (the shapes export will see).
    """
    import copy

    from edgecompress.prune.importance import make_importance
    from edgecompress.prune.pruner import StructuredPruner
    from edgecompress.prune.rebuild import check_rebuild, rebuild_pruned

    probe = copy.deepcopy(student).cpu()
    pruner = StructuredPruner(probe, example, target=target, importance=make_importance("l2"),
                              round_to=cfg.round_to, ignored_layers=cfg.ignored_layers,
                              plan=cfg.plan)
    pruner.step(1, 1)
    state = {k: v.detach().clone() for k, v in probe.state_dict().items()}
    rebuilt = rebuild_pruned(copy.deepcopy(student).cpu(), state)
    check_rebuild(rebuilt, probe, example[:1])
    return rebuilt


class ImagePruneSteps(PruneSteps):
    """The image family's pruning (run by the shared prune stage): channels removed with
    torch-pruning in ``steps`` slices, each recovered by distillation; ``prune/student.pt2``
    and ``prune/student_state.pt``."""

    @property
    def enabled(self) -> bool:
        return self.ctx.recipe.stages.prune.enabled

    def config(self) -> dict[str, Any]:
        raw = recipe_to_dict(self.ctx.recipe)
        if not self.enabled:
            return {"enabled": False}
        return {"student": raw["student"], "prune": raw["stages"]["prune"], "seed": raw["seed"]}

    def inputs(self) -> dict[str, Any]:
        ctx = self.ctx
        if not self.enabled:
            return {}
        return {"teacher": ctx.run_dir / "finetune" / "teacher.pt",
                "student": ctx.run_dir / "distill" / "student.pt",
                **spec_files(ctx.recipe.student, "student")}

    def prune(self) -> tuple[nn.Module, dict[str, Any]]:
        from edgecompress.prune.importance import make_importance
        from edgecompress.prune.pruner import StructuredPruner

        ctx = self.ctx
        cfg = ctx.recipe.stages.prune
        device, bundle = ctx.dist.device, ctx.bundle
        teacher = load_teacher(ctx).to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        teacher_logits = torch.from_numpy(predict_logits(teacher, bundle.train.x, device))
        student = load_state(build_student(ctx), ctx.run_dir / "distill" / "student.pt")
        distilled_acc = accuracy(student.to(device), bundle.test.x, bundle.test.y, device)
        pruner = StructuredPruner(student, torch.from_numpy(bundle.train.x[:1]),
                                  target=prune_target(cfg),
                                  importance=make_importance(cfg.importance),
                                  round_to=cfg.round_to, ignored_layers=cfg.ignored_layers,
                                  plan=cfg.plan)
        history = []
        for step in range(1, cfg.steps + 1):
            if cfg.importance == "taylor":
                self._taylor_gradients(ctx, student, teacher_logits)
            record = pruner.step(step, cfg.steps)  # traces and prunes on the CPU
            student.to(device)
            record["test_accuracy_pruned"] = accuracy(student, bundle.test.x, bundle.test.y,
                                                      device)
            if cfg.recovery_epochs:
                result = self._recover(ctx, student, teacher, teacher_logits, step)
                record["val_accuracy"] = result.best_val_accuracy
                record["best_epoch"] = result.best_epoch
            record["test_accuracy_recovered"] = accuracy(student, bundle.test.x, bundle.test.y,
                                                         device)
            history.append(record)
        metrics: dict[str, Any] = {**pruner.summary(), "importance": cfg.importance,
                                   "round_to": cfg.round_to, "steps": history,
                                   "test_accuracy_distilled": distilled_acc,
                                   "test_accuracy": history[-1]["test_accuracy_recovered"]}
        logger.info("pruned student: params %d -> %d, MACs %d -> %d, test accuracy %.4f -> "
                    "%.4f", metrics["params_before"], metrics["params_after"],
                    metrics["macs_before"], metrics["macs_after"], distilled_acc,
                    metrics["test_accuracy"])
        return student.cpu().eval(), metrics

    def save(self, model: nn.Module, out_dir: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        from edgecompress.prune.artifact import load_pruned, save_pruned

        x = self.ctx.bundle.test.x
        program, state = out_dir / PROGRAM_NAME, out_dir / STATE_NAME
        save_pruned(model, torch.from_numpy(x[:2]), program, state)
        return ({"program": program, "state": state},
                {"reload_max_abs_diff": _check_reload(model, load_pruned(program), x)})

    def _taylor_gradients(self, ctx: Context, student: nn.Module,
                          teacher_logits: torch.Tensor) -> None:
        """Gradients of the recovery loss for the Taylor criterion (on the CPU, like pruning)."""
        from edgecompress.prune.importance import accumulate_gradients

        cfg, bundle = ctx.recipe.stages.prune, ctx.bundle
        student.cpu()

        def loss_fn(logits: torch.Tensor, yb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return distillation_loss(logits, teacher_logits[idx], yb, alpha=cfg.alpha,
                                     temperature=cfg.temperature)

        accumulate_gradients(student, loss_fn, bundle.train.x, bundle.train.y,
                             batches=cfg.taylor_batches, batch_size=cfg.batch_size,
                             seed=ctx.recipe.seed)

    def _recover(self, ctx: Context, student: nn.Module, teacher: nn.Module,
                 teacher_logits: torch.Tensor, step: int):
        """Distillation fine-tuning of the pruned student (best validation epoch kept).

        With random train transforms (a streamed photo split) the teacher sees each augmented
        batch; otherwise its logits on the plain images are looked up.
        """
        cfg, bundle, device = ctx.recipe.stages.prune, ctx.bundle, ctx.dist.device
        targets = teacher_logits.to(device)
        online = augments(bundle.train.x)

        def loss_fn(module: nn.Module, xb: torch.Tensor, yb: torch.Tensor,
                    idx: torch.Tensor) -> torch.Tensor:
            if online:
                with torch.no_grad():
                    t_logits = teacher(xb)
            else:
                t_logits = targets[idx.to(device)]
            return distillation_loss(module(xb), t_logits, yb, alpha=cfg.alpha,
                                     temperature=cfg.temperature)

        return train(student, student, loss_fn, x_train=bundle.train.x, y_train=bundle.train.y,
                     x_val=bundle.val.x, y_val=bundle.val.y, epochs=cfg.recovery_epochs,
                     lr=cfg.lr, weight_decay=cfg.weight_decay, batch_size=cfg.batch_size,
                     patience=cfg.recovery_epochs, seed=ctx.recipe.seed + step,
                     dist_info=ctx.dist, desc=f"prune[step {step}]")


def _check_reload(model: nn.Module, reloaded: nn.Module, x: np.ndarray) -> float:
    """Prove the saved program reproduces the pruned module before anything trusts it.

    Raises:
        ParityError: The logits differ by more than :data:`RELOAD_ATOL`.
    """
    cpu = torch.device("cpu")
    diff = float(np.max(np.abs(predict_logits(model, x, cpu) - predict_logits(reloaded, x, cpu))))
    if not diff <= RELOAD_ATOL:
        raise ParityError(f"the saved pruned student differs from the pruned model by {diff:.3g} "
                          f"(> {RELOAD_ATOL:g}) on the test split")
    return diff

