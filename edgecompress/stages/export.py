"""The export stage, for every model family: the teacher and the final student to the files the
engines are built from, each accepted only after a parity check against PyTorch.

The family supplies the steps (:class:`ExportSteps`, from ``ModelFamily.export_steps``): which
models, how each is exported and checked (the image family: dynamo ONNX with a dynamic batch;
the text family: ONNX with dynamic batch and sequence, then ORT's transformer optimizer), and
what comes after (FP32 ``.tflite`` files for TFLite targets; the text family's INT8 files). The
stage runs them in order, collects outputs and metrics per role, and logs one line per file.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from pathlib import Path
from typing import Any

from edgecompress.stages.base import Context, FamilyStage, StageResult, StageSteps

logger = logging.getLogger(__name__)


class ExportSteps(StageSteps):
    """What a family does in the export stage."""

    @abstractmethod
    def models(self) -> dict[str, Any]:
        """Role (``student``, ``teacher``) -> the trained model to export."""

    @abstractmethod
    def export_role(self, role: str, model: Any, out_dir: Path
                    ) -> tuple[dict[str, Path], dict[str, Any]]:
        """Export ``model`` under ``out_dir`` and check it against PyTorch (raising on a
        mismatch): its outputs (the FP32 file under ``role``) and metrics (at least
        ``size_bytes`` of that file)."""

    def finish(self, models: dict[str, Any], out_dir: Path, outputs: dict[str, Path],
               metrics: dict[str, Any]) -> None:
        """What comes after the per-role exports (adds to ``outputs`` and ``metrics``)."""
        return None


class ExportStage(FamilyStage):
    """Produces ``export/teacher.onnx``, ``export/student.onnx`` and what the family adds."""

    name = "export"

    def steps(self, ctx: Context) -> StageSteps:
        return ctx.family.export_steps(ctx)

    def run(self, ctx: Context) -> StageResult:
        steps = self.steps(ctx)
        out_dir = ctx.stage_dir(self.name)
        models = {role: model.cpu().eval() for role, model in steps.models().items()}
        outputs: dict[str, Path] = {}
        metrics: dict[str, Any] = {}
        for role, model in models.items():
            files, metrics[role] = steps.export_role(role, model, out_dir)
            outputs.update(files)
        steps.finish(models, out_dir, outputs, metrics)
        return StageResult(outputs=outputs, metrics=metrics)
