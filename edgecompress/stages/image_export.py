"""The image family's export steps (run by the shared :class:`~edgecompress.stages.export.
ExportStage`): the student and the teacher to ONNX, each accepted only after a parity check.

Uses the dynamo exporter (opset >= 18, dynamic batch), ``onnx.checker``, and a comparison against
PyTorch on the test split (max abs diff, top-1 agreement) that raises on any failure.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from edgecompress.data.stream import parity_sample
from edgecompress.recipe import recipe_to_dict
from edgecompress.stages.base import Context
from edgecompress.stages.common import final_student_source, load_final_student, load_teacher
from edgecompress.stages.export import ExportSteps

logger = logging.getLogger(__name__)


class ImageExportSteps(ExportSteps):
    """The image family's export: ``export/student.onnx`` and ``export/teacher.onnx`` (FP32,
    dynamo exporter, dynamic batch), and FP32 ``.tflite`` files for TFLite targets."""

    def config(self) -> dict[str, Any]:
        return {"export": recipe_to_dict(self.ctx.recipe)["stages"]["export"],
                "formats": sorted(float_suffixes(self.ctx))}

    def inputs(self) -> dict[str, Any]:
        return {"teacher": self.ctx.run_dir / "finetune" / "teacher.pt",
                "student": final_student_source(self.ctx)}

    def models(self) -> dict[str, Any]:
        return {"student": load_final_student(self.ctx), "teacher": load_teacher(self.ctx)}

    def export_role(self, role: str, model: Any, out_dir: Path
                    ) -> tuple[dict[str, Path], dict[str, Any]]:
        from edgecompress.export import check_parity, export_onnx

        cfg, x = self.ctx.recipe.stages.export, self.ctx.bundle.test.x
        path = out_dir / f"{role}.onnx"
        export_onnx(model, torch.from_numpy(x[:2]), path, opset=cfg.opset,
                    dynamic_batch=cfg.dynamic_batch)
        parity = check_parity(model, path, parity_sample(x)[0], atol=cfg.atol,
                              min_top1_agreement=cfg.min_top1_agreement)
        logger.info("exported %s: %s (max abs diff %.2e, top-1 agreement %.4f)", role, path,
                    parity.max_abs_diff, parity.top1_agreement)
        return {role: path}, {"parity": parity.to_dict(), "size_bytes": path.stat().st_size}

    def finish(self, models: dict[str, Any], out_dir: Path, outputs: dict[str, Path],
               metrics: dict[str, Any]) -> None:
        if ".tflite" in float_suffixes(self.ctx):
            from edgecompress.stages.common import load_float_student

            models = {**models, "student": load_float_student(self.ctx)}  # a module, not
            # the re-exported program
            self._tflite(self.ctx, models, torch.from_numpy(self.ctx.bundle.test.x[:2]),
                         outputs, metrics)

    def _tflite(self, ctx: Context, models: dict[str, Any], sample: torch.Tensor,
                outputs: dict[str, Any], metrics: dict[str, Any]) -> None:
        """FP32 ``.tflite`` files for the TFLite targets (skipped, with the reason logged, when
        the converter is not installed: the bench stage then reports those targets skipped)."""
        from edgecompress.backends import get_backend

        ok, reason = get_backend("tflite").availability()
        if not ok:
            logger.warning("TFLite export skipped: %s", reason)
            metrics["tflite"] = {"skipped": reason}
            return
        from edgecompress.export.tflite import export_tflite

        out = ctx.stage_dir("export")
        for role, model in models.items():
            path = export_tflite(model, sample, out / f"{role}.tflite")
            outputs[f"{role}_tflite"] = path
            metrics.setdefault("tflite", {})[role] = {"size_bytes": path.stat().st_size}


def check_tflite_convertible(ctx: Context, models: dict[str, Any]) -> None:
    """Preflight for TFLite targets: litert-torch converts the (untrained) teacher and student.

    Whether the converter handles an architecture (ConvNeXt's Linear on 4-D NHWC tensors, say)
    does not depend on the weights, so it is checked here, before any training, instead of in
    the export stage after it. Costs one FP32 conversion per model (seconds for small ones).

    Raises:
        ModelError: The converter rejects a model: its message, and the ways out.
    """
    import tempfile

    if ".tflite" not in float_suffixes(ctx):
        return
    from edgecompress.backends import get_backend

    if not get_backend("tflite").availability()[0]:
        return  # the export stage logs why and the bench stage reports the targets skipped
    from edgecompress.errors import ModelError
    from edgecompress.export.tflite import export_tflite

    sample = torch.from_numpy(ctx.bundle.train.x[:1])
    names = [t.name for t in ctx.recipe.targets if t.backend == "tflite"]
    with tempfile.TemporaryDirectory(prefix="edgecompress-tflite-check-") as tmp:
        for role, model in models.items():
            try:
                export_tflite(_like_trained(model), sample, Path(tmp) / f"{role}.tflite")
            except ModelError as err:
                raise ModelError(
                    f"the {role} cannot be converted to TFLite, which targets "
                    f"{', '.join(names)} need: {err}. Ways out: drop those targets, or use a "
                    f"{role} whose layers litert-torch converts") from None


def _like_trained(model: Any) -> Any:
    """A copy whose parameters are nudged off their initial values (seeded noise).

    The converter folds what an untrained model makes trivial (LayerNorm weight 1 / bias 0, zero
    Linear biases) and may then lower the graph differently from the trained model's: ConvNeXt at
    1x1 spatial size converts untrained, but not once its LayerNorm affine is non-trivial
    (``tfl.batch_matmul`` of rank 4). The nudged copy converts like a trained model would.
    """
    import copy

    clone = copy.deepcopy(model).cpu().eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in clone.parameters():
            if param.is_floating_point():
                param.add_(0.01 * torch.randn(param.shape, generator=generator))
    return clone


def float_suffixes(ctx: Context) -> set[str]:
    """Artifact suffixes the recipe's targets build their FP32 engines from (``.onnx`` always:
    the ONNX export is also the reference every other format is checked against)."""
    from edgecompress.backends import get_backend

    return {".onnx"} | {get_backend(t.backend).capabilities.artifact_suffixes[0]
                        for t in ctx.recipe.targets}
