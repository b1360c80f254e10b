"""The teacher stage, for every model family: the teacher every later stage distils from.

The family adopts or builds the model and knows how to fine-tune, score and save it
(:class:`TeacherSteps`, from :meth:`~edgecompress.families.ModelFamily.teacher_steps`); this
stage is the order those steps run in and what every family gets the same way: seeding, the
device, DDP under torchrun (every rank trains its shard), rank 0 alone writing the model, and
the ``world_size`` record. Image runs call it ``finetune`` (``finetune/teacher.pt``), text runs
``teacher`` (``teacher/model/``, a Hugging Face directory): the name is the run directory's.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from pathlib import Path
from typing import Any

from edgecompress.stages.base import Context, FamilyStage, StageResult, StageSteps

logger = logging.getLogger(__name__)


class TeacherSteps(StageSteps):
    """What a family does in the teacher stage."""

    @abstractmethod
    def build(self) -> tuple[Any, dict[str, Any]]:
        """The untrained (or pretrained) teacher fitted to the task, and what to record of
        where it came from."""

    @abstractmethod
    def finetune(self, model: Any) -> dict[str, Any]:
        """Fine-tune ``model`` in place on the train split (validation picks the epoch); the
        training record, or ``{}`` when the recipe turns fine-tuning off."""

    @abstractmethod
    def score(self, model: Any) -> dict[str, Any]:
        """Metrics of the finished teacher (at least ``test_accuracy``)."""

    @abstractmethod
    def save(self, model: Any, out_dir: Path) -> dict[str, Path]:
        """Write the teacher (CPU, eval mode) under ``out_dir``; its files as stage outputs."""


class TeacherStage(FamilyStage):
    """Produces the teacher (``finetune/teacher.pt`` or ``teacher/model/``)."""

    distributed = True  # under torchrun every rank trains its shard (DDP)

    def __init__(self, name: str = "finetune") -> None:
        self.name = name

    def steps(self, ctx: Context) -> TeacherSteps:
        return ctx.family.teacher_steps(ctx)

    def run(self, ctx: Context) -> StageResult:
        from edgecompress.training import seed_everything

        steps = self.steps(ctx)
        seed_everything(ctx.recipe.seed)
        model, metrics = steps.build()
        model.to(ctx.dist.device)
        metrics.update(steps.finetune(model))
        model.eval()
        metrics.update(steps.score(model))
        metrics["world_size"] = ctx.dist.world_size
        if not ctx.dist.is_main:  # rank 0 writes the model; the pipeline waits for it
            return StageResult(metrics=metrics)
        outputs = steps.save(model.cpu().eval(), ctx.stage_dir(self.name))
        logger.info("teacher: test accuracy %.4f", metrics["test_accuracy"])
        return StageResult(outputs=outputs, metrics=metrics)
