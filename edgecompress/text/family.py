"""The text-classification family (``task: text-classification``): Hugging Face BERT-family
teachers, DistilBERT/TinyBERT-style students, head and FFN pruning, INT8 on ONNX Runtime.

Runs in the one :class:`~edgecompress.pipeline.Pipeline` (run directory ownership, manifests,
resume, lock) and reports through the shared report stage (report.json, report.md, report.html,
junit.xml, the gate), trains through the shared loop (:func:`edgecompress.training.fit`) and
runs its teacher, distill and prune steps (:mod:`edgecompress.text.stages`) and its export
steps (:mod:`edgecompress.text.engines`: ONNX, ORT-optimized, TFLite and INT8 files) in the
shared stages, and builds, scores and times its engines in the shared bench stage (it says
which files and what they are fed: :class:`~edgecompress.text.evalset.TokenEvalSet`).
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

    def api_inputs(self, raw: dict[str, Any], *, teacher: Any, student: Any, train: Any,
                   test: Any, inputs_dir: Path) -> dict[str, Any]:
        """A Hugging Face directory or a live ``(model, tokenizer)`` pair as the teacher (saved
        to ``inputs_dir/teacher``); texts in memory as the data ((text, label) pairs, a
        ``{"text", "label"}`` mapping or a Hugging Face ``Dataset``, written once to
        ``inputs_dir/texts.jsonl``, ``test`` kept whole). The student stays a section: it is
        built from the teacher."""
        from edgecompress.live import merge_mapping
        from edgecompress.text.live import data_section, teacher_section

        section = teacher_section(teacher, inputs_dir)
        if section is not None:
            raw = {**raw, "teacher": merge_mapping(dict(raw.get("teacher") or {}), section)}
            teacher = None
        if train is not None or test is not None:
            keep = {k: v for k, v in (raw.get("data") or {}).items()
                    if k not in ("path", "format", "text_column", "label_column",
                                 "split_column", "name")}
            raw = {**raw, "data": {**keep, **data_section(train, test, inputs_dir)}}
        return super().api_inputs(raw, teacher=teacher, student=student, train=None, test=None,
                                  inputs_dir=inputs_dir)

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
        from edgecompress.stages.bench import BenchStage
        from edgecompress.stages.data import DataStage
        from edgecompress.stages.export import ExportStage
        from edgecompress.stages.report import ReportStage
        from edgecompress.stages.student import DistillStage, PruneStage
        from edgecompress.stages.teacher import TeacherStage

        return [DataStage(), TeacherStage("teacher"), DistillStage(), PruneStage(),
                ExportStage(), BenchStage(), ReportStage()]

    def teacher_steps(self, ctx: Any) -> Any:
        from edgecompress.text.stages import TextTeacherSteps

        return TextTeacherSteps(ctx)

    def distill_steps(self, ctx: Any) -> Any:
        from edgecompress.text.stages import TextDistillSteps

        return TextDistillSteps(ctx)

    def prune_steps(self, ctx: Any) -> Any:
        from edgecompress.text.stages import TextPruneSteps

        return TextPruneSteps(ctx)

    def export_steps(self, ctx: Any) -> Any:
        from edgecompress.text.engines import TextExportSteps

        return TextExportSteps(ctx)

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

    # --- bench -------------------------------------------------------------------------------

    def bench_inputs(self, ctx: Any) -> dict[str, Path]:
        return {"export": ctx.run_dir / "export" / "stage.json"}

    def bench_reference(self, ctx: Any) -> tuple[Any, Any]:
        """The final student's test logits; its encoder MACs at each target's ``seq_len``."""
        from edgecompress.text.models import encoder_macs
        from edgecompress.text.stages import load_run_model
        from edgecompress.text.train import predict

        student = load_run_model(ctx.final_student_dir())
        logits = predict(student, ctx.encoded("test"), ctx.pad_id)
        return logits, lambda target: encoder_macs(student, target.seq_len)

    def eval_set(self, ctx: Any, target: Any) -> Any:
        from edgecompress.text.evalset import TokenEvalSet

        tok = ctx.tokenizer
        return TokenEvalSet(ctx.encoded("test"), ctx.pad_id, target.seq_len, tok.cls_token_id,
                            tok.sep_token_id)

    def engine_sources(self, ctx: Any, target: Any, fp32_reference: Any) -> Any:
        """TensorRT: the plain FP32 exports, or the static Q/DQ INT8 student with symmetric
        activations, built for the target's ``seq_len``. TFLite: the flatbuffers converted at
        the target's ``seq_len``. ONNX Runtime: the
        optimized FP32 files, or the INT8 student (its FP32 twin the optimized student); with
        ``quant.teacher_reference``, the teacher through ``quantize_dynamic`` is timed in the
        same rounds (``targets[].reference``). Every engine is compared with the float
        student, as ORT's dynamic INT8 has no PyTorch twin."""
        from edgecompress.stages.bench import EngineSources, ExtraEngine
        from edgecompress.text.tflite import tflite_path

        export, entry = ctx.run_dir / "export", {"seq_len": target.seq_len}
        if target.backend == "tensorrt":  # plain exports (no ORT contrib ops), built for seq_len
            options = {"sequence_length": target.seq_len}
            student = export / "student.onnx"
            if target.precision != "int8":
                return EngineSources(student, export / "teacher.onnx", fp32_reference,
                                     entry=entry, build_options=options)
            return EngineSources(export / "student.trt.int8.onnx", export / "teacher.onnx",
                                 fp32_reference, fp32=student, entry=entry,
                                 build_options=options)
        if target.backend == "tflite":
            return EngineSources(tflite_path(export, "student", target.seq_len),
                                 tflite_path(export, "teacher", target.seq_len),
                                 fp32_reference, entry=entry)
        teacher, student = export / "teacher.opt.onnx", export / "student.opt.onnx"
        extra = {"reference": ExtraEngine(export / "teacher.int8.onnx", "int8",
                                          "teacher + quantize_dynamic")} \
            if ctx.recipe.quant.teacher_reference else {}
        if target.precision != "int8":
            return EngineSources(student, teacher, fp32_reference, entry=entry, extra=extra)
        return EngineSources(export / "student.int8.onnx", teacher, fp32_reference,
                             fp32=student, entry=entry, extra=extra)

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
