"""The text-classification family (``task: text-classification``): Hugging Face BERT-family
teachers, DistilBERT/TinyBERT-style students, head and FFN pruning, INT8 on ONNX Runtime.

Runs in the one :class:`~edgecompress.pipeline.Pipeline` (run directory ownership, manifests,
resume, lock) and reports through the shared report stage (report.json, report.md, report.html,
junit.xml, the gate), trains through the shared loop (:func:`edgecompress.training.fit`) and
runs its engines through the shared backends' runners. Its stage classes for teacher, distill,
prune, export and bench are still its own (:mod:`edgecompress.text.stages`,
:mod:`edgecompress.text.engines`); they move onto the shared stage classes next.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar

from edgecompress.errors import BackendUnavailable, ConfigError
from edgecompress.families.base import ModelFamily

logger = logging.getLogger(__name__)


class TextFamily(ModelFamily):
    """Text classification with Hugging Face encoders."""

    task: ClassVar[str] = "text-classification"
    summary: ClassVar[str] = ("Hugging Face BERT-family encoders on "
                              "CSV/TSV/JSONL texts (extra 'text')")
    report_upstream: ClassVar[tuple[str, ...]] = ("data", "teacher", "distill", "prune",
                                                  "export", "bench")
    report_packages: ClassVar[tuple[str, ...]] = ("transformers", "tokenizers", "torchao",
                                                  "torch-pruning", "litert-torch",
                                                  "ai-edge-litert")

    def parse_recipe(self, raw: dict[str, Any], *, source: str, base_dir: Path | None) -> Any:
        from edgecompress.text.recipe import parse_text_recipe

        return parse_text_recipe(raw, source=source, base_dir=base_dir)

    def recipe_model(self) -> type:
        from edgecompress.text.recipe import TextRecipe

        return TextRecipe

    def recipe_to_dict(self, recipe: Any) -> dict[str, Any]:
        from edgecompress.text.recipe import text_recipe_to_dict

        return text_recipe_to_dict(recipe)

    def check_sources(self, recipe: Any) -> None:
        """transformers and onnxruntime import (exit 3 with the install line otherwise)."""
        from edgecompress.text.models import transformers_module

        transformers_module()
        from edgecompress.text.sources import file_format

        if file_format(recipe.data.path, recipe.data.format) == "hf":
            from edgecompress.data.hfdisk import datasets_module

            datasets_module()
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailable("the text pipeline's engines need onnxruntime: "
                                     "pip install 'edgecompress[onnx]'") from exc

    def context(self, recipe: Any, run_dir: Path, dist_info: Any) -> Any:
        from edgecompress.text.context import TextContext

        return TextContext(recipe, run_dir, dist_info)

    def stages(self) -> list[Any]:
        from edgecompress.stages.data import DataStage
        from edgecompress.stages.report import ReportStage
        from edgecompress.text.engines import TextBenchStage, TextExportStage
        from edgecompress.text.stages import DistillStage, TeacherStage, TextPruneStage

        return [DataStage(), TeacherStage(), DistillStage(), TextPruneStage(),
                TextExportStage(), TextBenchStage(), ReportStage()]

    def preflight(self, ctx: Any) -> None:
        """Runtimes present, data loads, the teacher directory exists, the student's layers fit
        the teacher (when its depth is known), layer maps in range, pruning asks for something."""
        self.check_sources(ctx.recipe)
        recipe = ctx.recipe
        b = ctx.bundle
        logger.info("data: %s, classes %s, train/val/test %d/%d/%d", b.name, b.classes,
                    len(b.train), len(b.val), len(b.test))
        depth = recipe.teacher.scratch.layers if recipe.teacher.scratch else None
        if recipe.teacher.path is not None:
            cfg = recipe.teacher.path / "config.json"
            if not cfg.is_file():
                from edgecompress.errors import ModelError

                raise ModelError(f"teacher.path: {recipe.teacher.path} is not a Hugging Face "
                                 "model directory (no config.json)")
            try:
                depth = int(json.loads(cfg.read_text()).get("num_hidden_layers"))
            except (ValueError, TypeError):
                depth = None
        if depth is not None:
            from edgecompress.text.losses import check_layer_map
            from edgecompress.text.models import kept_layers

            kept = kept_layers(recipe.student, depth)
            for section in (recipe.distill, recipe.prune.recovery, recipe.quant.qat):
                if section.layer_map is not None:
                    check_layer_map([tuple(p) for p in section.layer_map], len(kept), depth)
        if recipe.prune.enabled and recipe.prune.heads_ratio == 0 and recipe.prune.ffn_ratio == 0:
            raise ConfigError("prune.enabled: set prune.heads_ratio and/or prune.ffn_ratio > 0")

    def data_fingerprint(self, ctx: Any) -> str:
        return ctx.bundle.fingerprint

    def record_data(self, ctx: Any, out_dir: Path) -> tuple[dict[str, Path], dict[str, Any]]:
        """``dataset.json``: name, source, classes, fingerprint, split sizes (and which the
        data gave), limits applied, test class counts."""
        from edgecompress.io import atomic_write_json

        b = ctx.bundle
        info = {"name": b.name, "classes": b.classes, "fingerprint": b.fingerprint,
                "train": len(b.train), "val": len(b.val), "test": len(b.test), **b.info,
                "test_class_counts": [int((b.test.labels == c).sum())
                                      for c in range(b.num_classes)]}
        atomic_write_json(out_dir / "dataset.json", info)
        return {"dataset": out_dir / "dataset.json"}, info

    def report_body(self, ctx: Any, manifests: dict[str, dict[str, Any]],
                    targets: list[dict[str, Any]]) -> dict[str, Any]:
        from edgecompress.text.report import text_report_body

        return text_report_body(manifests)

    def report_markdown(self, report: dict[str, Any]) -> str:
        from edgecompress.text.report import text_markdown

        return text_markdown(report)
