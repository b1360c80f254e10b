"""The image-classification family: built-in CNNs, zoo ids (torchvision, timm, Hugging Face
image models), factories, TorchScript/.pt2 files and live ``nn.Module``s, on image data
(digits, npz, idx, image folders, Hugging Face image datasets).

Its stages are :mod:`edgecompress.stages` (finetune -> distill -> prune -> qat -> export ->
bench -> report); this module is what the pipeline asks of it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

from edgecompress.families.base import ModelFamily

logger = logging.getLogger(__name__)


class ImageFamily(ModelFamily):
    """Image classification (``task: image-classification``, the default)."""

    task: ClassVar[str] = "image-classification"
    summary: ClassVar[str] = ("CNNs and ViTs (built-in, torchvision, timm, "
                              "Hugging Face, any nn.Module) on image data")
    report_upstream: ClassVar[tuple[str, ...]] = ("data", "finetune", "distill", "prune", "qat",
                                                  "export", "bench")
    report_packages: ClassVar[tuple[str, ...]] = ("torch-pruning", "torchao", "litert-torch",
                                                  "ai-edge-litert", "tensorrt", "datasets")

    def parse_recipe(self, raw: dict[str, Any], *, source: str, base_dir: Path | None) -> Any:
        from edgecompress.recipe import parse_recipe

        return parse_recipe(raw, source=source, base_dir=base_dir)

    def recipe_model(self) -> type:
        from edgecompress.recipe import Recipe

        return Recipe

    def recipe_to_dict(self, recipe: Any) -> dict[str, Any]:
        from edgecompress.recipe import recipe_to_dict

        return recipe_to_dict(recipe)

    def api_inputs(self, raw: dict[str, Any], *, teacher: Any, student: Any, train: Any,
                   test: Any, inputs_dir: Path) -> dict[str, Any]:
        """Live ``nn.Module``s, ``.pt2``/TorchScript paths or spec dicts as teacher/student;
        arrays or a map-style ``Dataset`` as data (written once to ``inputs_dir/data.npz``)."""
        from edgecompress.errors import ConfigError
        from edgecompress.live import model_spec, write_arrays

        raw = dict(raw)
        if teacher is not None:
            raw["teacher"] = model_spec(teacher, "teacher")
        if student is not None:
            raw["student"] = model_spec(student, "student")
        if train is not None:
            data = {k: v for k, v in (raw.get("data") or {}).items()
                    if k not in ("source", "path")}
            raw["data"] = {"name": "arrays passed to compress()", **data,
                           **write_arrays(train, test, inputs_dir)}
        elif test is not None:
            raise ConfigError("test data without train data: pass train= as well")
        return raw

    def check_sources(self, recipe: Any) -> None:
        from edgecompress.stages.common import check_model_sources

        check_model_sources(recipe)

    def context(self, recipe: Any, run_dir: Path, dist_info: Any) -> Any:
        from edgecompress.stages.base import Context

        return Context(recipe, run_dir, dist_info)

    def stages(self) -> list[Any]:
        from edgecompress.stages.bench import BenchStage
        from edgecompress.stages.data import DataStage
        from edgecompress.stages.export import ExportStage
        from edgecompress.stages.qat import QatStage
        from edgecompress.stages.report import ReportStage
        from edgecompress.stages.student import DistillStage, PruneStage
        from edgecompress.stages.teacher import TeacherStage

        return [DataStage(), TeacherStage("finetune"), DistillStage(), PruneStage(), QatStage(),
                ExportStage(), BenchStage(), ReportStage()]

    def teacher_steps(self, ctx: Any) -> Any:
        from edgecompress.stages.finetune import ImageTeacherSteps

        return ImageTeacherSteps(ctx)

    def distill_steps(self, ctx: Any) -> Any:
        from edgecompress.stages.distill import ImageDistillSteps

        return ImageDistillSteps(ctx)

    def prune_steps(self, ctx: Any) -> Any:
        from edgecompress.stages.prune import ImagePruneSteps

        return ImagePruneSteps(ctx)

    def export_steps(self, ctx: Any) -> Any:
        from edgecompress.stages.image_export import ImageExportSteps

        return ImageExportSteps(ctx)

    def preflight(self, ctx: Any) -> None:
        """Data loads, models build and fit the data's shape and classes, feature taps exist,
        the prune section fits the student, targets name supported backends and settings, the
        int8 presets fit their backends, and TFLite targets' models convert."""
        from edgecompress.backends import get_backend
        from edgecompress.stages.common import build_student, build_teacher_arch
        from edgecompress.stages.losses import FeatureTaps

        self.check_sources(ctx.recipe)  # packages and names, before any data is read
        bundle = ctx.bundle
        logger.info("data: %s, %d classes, input %s, train/val/test %d/%d/%d", bundle.name,
                    bundle.num_classes, bundle.input_shape, len(bundle.train.y),
                    len(bundle.val.y), len(bundle.test.y))
        teacher, _ = build_teacher_arch(ctx)
        student = build_student(ctx)
        features = ctx.recipe.stages.distill.features
        if features == "auto":  # pairs found from shapes now, so "no pair" fails before any run
            from edgecompress.stages.feature_match import preflight_auto_features

            features = preflight_auto_features(ctx.recipe.stages.distill, teacher, student,
                                               bundle.train.x[:2])
        for feature in features:  # layer names exist (hooks removed)
            FeatureTaps(teacher, [feature.teacher], "teacher").remove()
            FeatureTaps(student, [feature.student], "student").remove()
        from edgecompress.stages.prune import check_prune

        pruned = check_prune(ctx, student)  # layers exist, budget reachable, copy rebuilds
        for target in ctx.recipe.targets:
            get_backend(target.backend).validate(target.precision, target.threads)
        from edgecompress.stages.qat import check_qat

        check_qat(ctx.recipe)  # int8 targets: qat enabled, each preset fits its backend
        from edgecompress.stages.image_export import check_tflite_convertible

        # The converter sees the pruned shapes (ConvNeXt converts whole but not pruned).
        check_tflite_convertible(ctx, {"teacher": teacher, "student": pruned or student})

    # --- bench -------------------------------------------------------------------------------

    def bench_inputs(self, ctx: Any) -> dict[str, Path]:
        from edgecompress.stages.common import final_student_source
        from edgecompress.stages.image_export import float_suffixes
        from edgecompress.stages.qat import preset_artifact, preset_reference, required_presets

        files = {"student": final_student_source(ctx)}
        for suffix in float_suffixes(ctx):
            for role in ("student", "teacher"):
                files[f"{role}{suffix}" if suffix != ".onnx" else f"{role}_onnx"] = \
                    ctx.run_dir / "export" / f"{role}{suffix}"
        if ctx.recipe.stages.qat.enabled:
            for preset in required_presets(ctx.recipe):
                files[f"{preset}_int8"] = preset_artifact(ctx.run_dir, preset)
                files[f"{preset}_reference"] = preset_reference(ctx.run_dir, preset)
        return files

    def bench_reference(self, ctx: Any) -> tuple[Any, Any]:
        from edgecompress.stages.common import load_final_student
        from edgecompress.training import predict_logits

        student = load_final_student(ctx)
        logits = predict_logits(student, ctx.bundle.test.x, ctx.dist.device)
        macs = _student_macs(student, ctx.bundle.input_shape)
        return logits, lambda _target: macs

    def eval_set(self, ctx: Any, target: Any) -> Any:
        from edgecompress.bench.evalset import ArrayEvalSet

        return ArrayEvalSet(ctx.bundle.test.x, ctx.bundle.test.y)

    def engine_sources(self, ctx: Any, target: Any, fp32_reference: Any) -> Any:
        """Float targets start from the exported FP32 file of the backend's format and are
        compared with the float student; int8 targets start from their preset's quantized
        model and are compared with the PyTorch int8 model (comparing with the float student
        would blame the engine for quantization error)."""
        import numpy as np

        from edgecompress.backends import get_backend
        from edgecompress.stages.bench import EngineSources

        export = ctx.run_dir / "export"
        suffix = get_backend(target.backend).capabilities.artifact_suffixes[0]
        float_student, teacher = export / f"student{suffix}", export / f"teacher{suffix}"
        if target.precision != "int8":
            return EngineSources(float_student, teacher, fp32_reference)
        from edgecompress.quant.presets import preset_for_target
        from edgecompress.stages.qat import preset_artifact, preset_reference

        preset = preset_for_target(target.backend, target.quant_preset, target.isa)
        source = preset_artifact(ctx.run_dir, preset)
        if not source.is_file():
            return f"no {preset} int8 model was produced ({source.name} missing: see the qat stage)"
        ref_path = preset_reference(ctx.run_dir, preset)
        reference = np.load(ref_path) if ref_path.is_file() else fp32_reference
        return EngineSources(source, teacher, reference, fp32=float_student,
                             entry={"quant_preset": preset})

    def data_fingerprint(self, ctx: Any) -> str:
        return ctx.bundle.fingerprint()  # content hash of the split arrays / files

    def record_data(self, ctx: Any, out_dir: Path) -> tuple[dict[str, Path], dict[str, Any]]:
        """``dataset.json`` (name, fingerprint, classes, shape, normalisation, split sizes) and
        the seeded calibration subset the qat stage's PTQ reads."""
        from edgecompress.data import sample_calibration, save_calibration
        from edgecompress.io import atomic_write_json

        bundle, seed = ctx.bundle, ctx.recipe.seed
        x_cal, y_cal = sample_calibration(bundle, ctx.recipe.data.calibration_samples, seed=seed)
        calib = save_calibration(out_dir, x_cal, y_cal, bundle, seed=seed)
        summary = {
            "name": bundle.name, "fingerprint": bundle.fingerprint(),
            "num_classes": bundle.num_classes, "input_shape": list(bundle.input_shape),
            "class_names": bundle.class_names, "mean": bundle.mean, "std": bundle.std,
            "samples": {"train": len(bundle.train.y), "val": len(bundle.val.y),
                        "test": len(bundle.test.y), "calibration": int(len(y_cal))},
        }
        atomic_write_json(out_dir / "dataset.json", summary)
        return ({"dataset": out_dir / "dataset.json", "calibration": calib,
                 "calibration_meta": out_dir / "calibration.json"}, summary["samples"])

    def report_body(self, ctx: Any, manifests: dict[str, dict[str, Any]],
                    targets: list[dict[str, Any]]) -> dict[str, Any]:
        from edgecompress.models import count_macs, count_params
        from edgecompress.stages.common import load_final_student, load_teacher

        bundle = ctx.bundle
        finetune, distill, export = manifests["finetune"], manifests["distill"], manifests["export"]
        prune = manifests["prune"]
        teacher, student = load_teacher(ctx), load_final_student(ctx)
        shape = bundle.input_shape
        # The exported student is the pruned one when pruning ran; without pruning it is the
        # one the distill stage carried forward (distilled, or hard-label when that was better).
        student_acc = prune["test_accuracy"] if prune.get("enabled") else \
            (distill.get("final") or distill["student"])["test_accuracy"]
        return {
            "dataset": {**bundle.describe(), "eval_samples": int(len(bundle.test.y)),
                        "num_classes": bundle.num_classes, "input_shape": list(shape),
                        "augmentations": {"finetune": ctx.recipe.stages.finetune.augment,
                                          "distill": ctx.recipe.stages.distill.augment}},
            "teacher": {"accuracy": finetune["test_accuracy"], "params": count_params(teacher),
                        "macs": count_macs(teacher, shape),
                        "size_bytes": export["teacher"]["size_bytes"]},
            "student": {"accuracy_fp32": student_acc,
                        "accuracy_fp32_distilled": distill["student"]["test_accuracy"],
                        "params": count_params(student), "macs": count_macs(student, shape),
                        "size_bytes": export["student"]["size_bytes"],
                        "baseline_accuracy_fp32": distill.get("baseline", {}).get(
                            "test_accuracy"),
                        "distillation_gain_pp": distill.get("distillation_gain_pp")},
            "distillation": distill.get("distillation"),
            "quantization": quantization_summary(manifests["qat"]),
        }

    def run_blocks(self, report: dict[str, Any]) -> dict[str, Any]:
        return {"distillation": report.get("distillation")}


def _student_macs(student: Any, input_shape: Any) -> int | None:
    """MACs of one forward pass of the student (None where they cannot be counted)."""
    from edgecompress.errors import ModelError
    from edgecompress.models import count_macs

    try:
        return int(count_macs(student, tuple(input_shape)))
    except ModelError as err:
        logger.warning("student MACs not counted (%s): no GMAC/s in the report", err)
        return None


def quantization_summary(qat: dict[str, Any]) -> dict[str, Any] | None:
    """Per INT8 preset: mode, accuracy of the PyTorch int8 model vs the float student, which
    layers are int8 and which stayed FP32 (and why: sensitivity, accuracy criterion)."""
    if not qat.get("enabled"):
        return None
    out: dict[str, Any] = {"mode": qat["mode"], "fp32_test_accuracy": qat["fp32"]["test_accuracy"],
                           "presets": {}}
    keys = ("status", "reason", "targets", "test_accuracy", "test_drop_vs_fp32_pp",
            "layers_quantized", "fp32_layers", "sensitivity", "accuracy_criterion", "parity",
            "size_bytes", "rationale")
    for name, entry in qat.get("presets", {}).items():
        out["presets"][name] = {k: entry[k] for k in keys if k in entry}
        choice = entry.get("qat") or {}
        if "kept" in choice:  # qat mode compared with PTQ on the validation split
            out["presets"][name]["qat_vs_ptq"] = {k: choice[k] for k in (
                "kept", "qat_val_accuracy", "ptq_val_accuracy", "ptq_calibration")}
    return out
