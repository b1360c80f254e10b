"""The stages that make the student, for every model family: ``distill`` and ``prune``.

As with the teacher stage (:mod:`edgecompress.stages.teacher`), the family supplies the steps
(its models, losses and pruning units: :class:`DistillSteps`, :class:`PruneSteps`, from
``ModelFamily.distill_steps`` / ``prune_steps``) and the stage does what every family does the
same way: seeding, DDP under torchrun (every rank trains its shard, the same pruning on every
rank), rank 0 alone writing, the ``world_size`` record, and a disabled prune stage being a
no-op that writes nothing.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from pathlib import Path
from typing import Any

from edgecompress.stages.base import Context, FamilyStage, StageResult, StageSteps

logger = logging.getLogger(__name__)


class DistillSteps(StageSteps):
    """A family's distillation: train the student against the frozen teacher."""

    @abstractmethod
    def distill(self) -> tuple[dict[str, Any], str, dict[str, Any]]:
        """Train the student(s): ``(role -> trained model, the role carried forward,
        metrics)``. Several roles when the family also trains a comparison (the image family's
        hard-label baseline)."""

    @abstractmethod
    def save(self, models: dict[str, Any], kept: str, out_dir: Path) -> dict[str, Path]:
        """Write the carried-forward student (and any comparison) under ``out_dir``."""


class PruneSteps(StageSteps):
    """A family's structured pruning: remove its units (channels, heads, FFN neurons) from the
    distilled student and recover the accuracy by distillation."""

    @property
    @abstractmethod
    def enabled(self) -> bool:
        """Whether the recipe asks for pruning."""

    @abstractmethod
    def prune(self) -> tuple[Any, dict[str, Any]]:
        """The pruned, recovered student and the stage's metrics (plan, sizes, accuracies,
        at least ``test_accuracy``)."""

    @abstractmethod
    def save(self, model: Any, out_dir: Path) -> tuple[dict[str, Path], dict[str, Any]]:
        """Write the pruned student, prove it reloads to the same logits; ``(outputs,
        metrics of the check)``."""


class DistillStage(FamilyStage):
    """Produces the distilled student (``distill/student.pt``, or ``distill/model/``)."""

    name = "distill"
    distributed = True  # under torchrun every rank trains its shard (DDP)

    def steps(self, ctx: Context) -> StageSteps:
        return ctx.family.distill_steps(ctx)

    def run(self, ctx: Context) -> StageResult:
        from edgecompress.training import seed_everything

        steps = self.steps(ctx)
        seed_everything(ctx.recipe.seed)
        models, kept, metrics = steps.distill()
        metrics["world_size"] = ctx.dist.world_size
        if not ctx.dist.is_main:  # rank 0 writes the student; the pipeline waits for it
            return StageResult(metrics=metrics)
        return StageResult(outputs=steps.save(models, kept, ctx.stage_dir(self.name)),
                           metrics=metrics)


class PruneStage(FamilyStage):
    """Produces the pruned student (``prune/student.pt2``, or ``prune/model/``) when enabled;
    disabled, it writes nothing and the distilled student stays the final one."""

    name = "prune"
    distributed = True  # every rank prunes identically, then trains its shard (DDP)

    def steps(self, ctx: Context) -> StageSteps:
        return ctx.family.prune_steps(ctx)

    def run(self, ctx: Context) -> StageResult:
        from edgecompress.training import seed_everything

        steps = self.steps(ctx)
        if not steps.enabled:
            logger.info("pruning disabled: the distilled student is the final student")
            return StageResult(metrics={"enabled": False})
        seed_everything(ctx.recipe.seed)
        model, metrics = steps.prune()
        metrics = {"enabled": True, **metrics, "world_size": ctx.dist.world_size}
        if not ctx.dist.is_main:
            return StageResult(metrics=metrics)
        outputs, checks = steps.save(model, ctx.stage_dir(self.name))
        metrics.update(checks)
        return StageResult(outputs=outputs, metrics=metrics)
