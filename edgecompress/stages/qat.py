"""qat stage: one INT8 model per preset that the recipe's int8 targets need.

From the final float student (distilled, pruned if enabled), for each preset (``ort-x86``,
``tensorrt``, ``tflite``): export the graph, insert fake quantization (QAT, with the teacher
still distilling) or observers (PTQ on the saved calibration set), convert, and write the file
the backend consumes (``qat/<preset>/student.onnx`` as QDQ, or ``.tflite``). Optionally measures
per-layer sensitivity and keeps the most sensitive layers in FP32 until an accuracy criterion
holds. Every int8 model is checked against its PyTorch twin before it is published, and the
PyTorch int8 logits on the test split are saved as the parity reference of the engines.

Runs on the main process only, on the CPU (PT2E QAT of a small student is seconds to minutes).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecompress.data.stream import parity_sample
from edgecompress.errors import ConfigError, ParityError
from edgecompress.io import atomic_path
from edgecompress.recipe import Recipe, recipe_to_dict
from edgecompress.stages.base import Context, Stage, StageResult
from edgecompress.stages.common import (
    load_float_student,
    load_teacher,
    spec_files,
)
from edgecompress.training import predict_logits, seed_everything

logger = logging.getLogger(__name__)

REFERENCE_NAME = "reference_logits.npy"


def required_presets(recipe: Recipe) -> dict[str, list[str]]:
    """Preset name -> names of the int8 targets that use it (recipe order).

    Raises:
        ConfigError: A target's preset cannot run on its backend, naming both.
    """
    from edgecompress.quant.presets import preset_for_target

    out: dict[str, list[str]] = {}
    for target in recipe.targets:
        if target.precision != "int8":
            if target.quant_preset is not None:
                raise ConfigError(f"targets[{target.name}].quant_preset is set but its precision "
                                  f"is {target.precision!r}, not int8")
            continue
        try:
            name = preset_for_target(target.backend, target.quant_preset, target.isa)
        except ConfigError as err:
            raise ConfigError(f"targets[{target.name}]: {err}") from None
        out.setdefault(name, []).append(target.name)
    return out


def check_qat(recipe: Recipe) -> None:
    """Preflight: int8 targets need the qat stage and presets that fit their backends."""
    presets = required_presets(recipe)
    if presets and not recipe.stages.qat.enabled:
        targets = [t for names in presets.values() for t in names]
        raise ConfigError(f"targets {', '.join(targets)} have precision int8, which needs "
                          "stages.qat.enabled: true (qat or ptq mode)")


def preset_artifact(run_dir: Path, preset: str) -> Path:
    """Where the qat stage writes ``preset``'s int8 model."""
    from edgecompress.quant.presets import get_preset

    suffix = ".tflite" if preset == "tflite" else get_preset(preset).artifact_suffix
    return run_dir / "qat" / preset / f"student{suffix}"


def preset_reference(run_dir: Path, preset: str) -> Path:
    """The PyTorch int8 model's test-split logits for ``preset`` (parity reference)."""
    return run_dir / "qat" / preset / REFERENCE_NAME


def _float_source(ctx: Context) -> Path:
    if ctx.recipe.stages.prune.enabled:
        return ctx.run_dir / "prune" / "student_state.pt"
    return ctx.run_dir / "distill" / "student.pt"


class QatStage(Stage):
    """Produces ``qat/<preset>/student.{onnx,tflite}`` and the parity references."""

    name = "qat"

    def config(self, ctx: Context) -> dict[str, Any]:
        raw = recipe_to_dict(ctx.recipe)
        if not ctx.recipe.stages.qat.enabled:
            return {"enabled": False}
        return {"qat": raw["stages"]["qat"], "presets": required_presets(ctx.recipe),
                "student": raw["student"], "opset": raw["stages"]["export"]["opset"],
                "seed": raw["seed"]}

    def inputs(self, ctx: Context) -> dict[str, Any]:
        if not ctx.recipe.stages.qat.enabled:
            return {}
        return {"teacher": ctx.run_dir / "finetune" / "teacher.pt",
                "student": _float_source(ctx),
                "calibration": ctx.run_dir / "data" / "calibration.npz",
                **spec_files(ctx.recipe.student, "student")}

    def run(self, ctx: Context) -> StageResult:
        cfg = ctx.recipe.stages.qat
        if not cfg.enabled:
            logger.info("qat disabled: no int8 models")
            return StageResult(metrics={"enabled": False})
        from edgecompress.data import load_calibration

        bundle = ctx.bundle
        seed_everything(ctx.recipe.seed)
        cpu = torch.device("cpu")
        student = load_float_student(ctx).cpu().eval()
        fp32_val = predict_logits(student, bundle.val.x, cpu)
        fp32_test = predict_logits(student, bundle.test.x, cpu)
        fp32 = {"val_accuracy": _acc(fp32_val, bundle.val.y),
                "test_accuracy": _acc(fp32_test, bundle.test.y)}
        teacher_logits = None
        if cfg.mode == "qat" and cfg.alpha > 0:
            teacher = load_teacher(ctx).cpu().eval()
            teacher_logits = torch.from_numpy(predict_logits(teacher, bundle.train.x, cpu))
        calib_x, _ = load_calibration(ctx.run_dir / "data")
        outputs: dict[str, Path] = {}
        metrics: dict[str, Any] = {"enabled": True, "mode": cfg.mode, "fp32": fp32,
                                   "presets": {}}
        for name, targets in required_presets(ctx.recipe).items():
            result = self._one_preset(ctx, name, student, teacher_logits, calib_x, fp32)
            result["targets"] = targets
            metrics["presets"][name] = result
            if result.get("status") == "ok":
                outputs[f"{name}:model"] = preset_artifact(ctx.run_dir, name)
                outputs[f"{name}:reference"] = preset_reference(ctx.run_dir, name)
        return StageResult(outputs=outputs, metrics=metrics)

    def _one_preset(self, ctx: Context, name: str, student: nn.Module,
                    teacher_logits: torch.Tensor | None, calib_x: np.ndarray,
                    fp32: dict[str, float]) -> dict[str, Any]:
        from edgecompress.quant.presets import get_preset
        from edgecompress.quant.training import accuracy_of, predict

        cfg, bundle = ctx.recipe.stages.qat, ctx.bundle
        preset = get_preset(name, **_preset_options(ctx, name))
        ok, reason = preset.availability()
        if not ok:
            logger.warning("qat preset %s skipped: %s", name, reason)
            return {"status": "skipped", "reason": reason}
        example = torch.from_numpy(bundle.train.x[:2])
        result: dict[str, Any] = {"status": "ok", "preset": name, "rationale": preset.rationale}
        sensitivity: list[dict[str, Any]] = []
        if cfg.sensitivity or cfg.max_accuracy_drop is not None:
            from edgecompress.quant.sensitivity import layer_sensitivity

            sensitivity = layer_sensitivity(preset, student, example=example,
                                            calibration=calib_x, x_val=bundle.val.x,
                                            y_val=bundle.val.y)
            result["sensitivity"] = sensitivity
        skip = list(cfg.keep_fp32)
        candidates = [e["layer"] for e in sensitivity if e["layer"] not in skip]
        attempts = []
        while True:
            converted, train_info, layers = self._quantize(ctx, preset, student, example,
                                                           teacher_logits, calib_x, skip)
            val_acc = accuracy_of(converted, bundle.val.x, bundle.val.y)
            drop = 100.0 * (fp32["val_accuracy"] - val_acc)
            attempts.append({"fp32_layers": list(skip), "val_accuracy": val_acc,
                             "val_drop_vs_fp32_pp": round(drop, 4)})
            if (cfg.max_accuracy_drop is None or drop <= cfg.max_accuracy_drop
                    or not candidates or len(skip) - len(cfg.keep_fp32) >= cfg.max_fallback_layers):
                break
            skip.append(candidates.pop(0))
            logger.info("%s: val drop %.2f pp > %.2f pp; keeping %s in FP32", name, drop,
                        cfg.max_accuracy_drop, skip[-1])
        if cfg.max_accuracy_drop is not None:
            result["accuracy_criterion"] = {"max_accuracy_drop": cfg.max_accuracy_drop,
                                            "met": attempts[-1]["val_drop_vs_fp32_pp"]
                                            <= cfg.max_accuracy_drop, "attempts": attempts}
        logits = predict(converted, bundle.test.x)
        out = preset_artifact(ctx.run_dir, name)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(preset_reference(ctx.run_dir, name)) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, logits)
        preset.export(converted, example, out)
        px, py, plogits = parity_sample(bundle.test.x, bundle.test.y, logits)
        if out.suffix == ".onnx":
            result["parity"] = _check_onnx(out, plogits, px, py, cfg, converted)
        elif out.suffix == ".tflite":
            from edgecompress.export.tflite import check_tflite_parity

            result["parity"] = check_tflite_parity(
                out, plogits, px, min_top1_agreement=cfg.min_top1_agreement,
                y=py, max_metric_diff_pp=cfg.max_metric_diff_pp, rtol=cfg.rtol)
        if name == "tensorrt":
            # TensorRT cannot run here; its rules can be checked on the CPU (raises ModelError
            # listing every finding: our own export breaking them is a bug, never shipped).
            from edgecompress.quant.trt_lint import check_tensorrt_compat

            result["tensorrt_lint"] = check_tensorrt_compat(out, require_qdq=True).to_dict()
        result.update({
            "layers_quantized": layers.get("quantized", []),
            "fp32_layers": layers.get("skipped", []),
            "val_accuracy": val_acc, "test_accuracy": _acc(logits, bundle.test.y),
            "test_drop_vs_fp32_pp": round(100.0 * (fp32["test_accuracy"]
                                                   - _acc(logits, bundle.test.y)), 4),
            "artifact": str(out.relative_to(ctx.run_dir)), "size_bytes": out.stat().st_size,
            **train_info,
        })
        logger.info("%s int8 (%s): test accuracy %.4f (fp32 student %.4f), %d layers int8, %d "
                    "fp32", name, cfg.mode, result["test_accuracy"], fp32["test_accuracy"],
                    len(result["layers_quantized"]), len(result["fp32_layers"]))
        return result

    def _quantize(self, ctx: Context, preset: Any, student: nn.Module, example: torch.Tensor,
                  teacher_logits: torch.Tensor | None, calib_x: np.ndarray,
                  skip: list[str]) -> tuple[nn.Module, dict[str, Any], dict[str, list[str]]]:
        """One prepare -> (QAT | calibrate) -> convert pass; returns the converted model."""
        from edgecompress.quant.training import calibrate, qat_finetune

        cfg, bundle = ctx.recipe.stages.qat, ctx.bundle
        seed_everything(ctx.recipe.seed)
        model = copy.deepcopy(student)
        prepared = preset.prepare(model, example, qat=cfg.mode == "qat", skip=skip)
        layers = dict(getattr(preset, "layers", {}))
        info: dict[str, Any] = {}
        if cfg.mode == "qat":
            # Start from calibrated ranges (as PTQ would), not from the first training batch.
            calibrate(prepared, calib_x)
            res = qat_finetune(prepared, x_train=bundle.train.x, y_train=bundle.train.y,
                               teacher_logits=teacher_logits, x_val=bundle.val.x,
                               y_val=bundle.val.y, epochs=cfg.epochs, lr=cfg.lr,
                               weight_decay=cfg.weight_decay, batch_size=cfg.batch_size,
                               temperature=cfg.temperature, alpha=cfg.alpha,
                               freeze_observers_after=cfg.freeze_observers_after,
                               freeze_bn_after=cfg.freeze_bn_after, seed=ctx.recipe.seed,
                               desc=f"qat[{preset.name}]")
            info["qat"] = {"best_epoch": res.best_epoch, "steps": res.steps,
                           "observers_frozen_at_step": res.observers_frozen_at,
                           "bn_frozen_at_step": res.bn_frozen_at, "history": res.history}
            converted = preset.convert(prepared)
            if cfg.compare_with_ptq:
                converted = self._better_of_qat_and_ptq(ctx, preset, student, example, calib_x,
                                                        skip, converted, info["qat"])
            return converted, info, layers
        calibrate(prepared, calib_x)
        info["ptq"] = {"calibration": cfg.calibration, "samples": int(len(calib_x))}
        return preset.convert(prepared), info, layers

    def _better_of_qat_and_ptq(self, ctx: Context, preset: Any, student: nn.Module,
                               example: torch.Tensor, calib_x: np.ndarray, skip: list[str],
                               qat_model: nn.Module, qat_info: dict[str, Any]) -> nn.Module:
        """Keep the QAT model only if it beats plain PTQ (same preset, same calibration) on the
        validation split; on a tie keep PTQ, whose weights are the validated float student's.

        QAT moves the weights; when that buys nothing measurable (int8 already lossless, as on
        small easy tasks) the untouched weights are the safer model. Both accuracies and the
        choice go to the report (``qat.ptq_val_accuracy``, ``qat.kept``)."""
        from edgecompress.quant.training import accuracy_of, calibrate

        bundle = ctx.bundle
        prepared = preset.prepare(copy.deepcopy(student), example, qat=False, skip=skip)
        calibrate(prepared, calib_x)
        ptq_model = preset.convert(prepared)
        qat_val = accuracy_of(qat_model, bundle.val.x, bundle.val.y)
        ptq_val = accuracy_of(ptq_model, bundle.val.x, bundle.val.y)
        kept = "qat" if qat_val > ptq_val else "ptq"
        qat_info.update({"qat_val_accuracy": qat_val, "ptq_val_accuracy": ptq_val,
                         "ptq_calibration": getattr(preset, "calibration", "preset default"),
                         "kept": kept})
        logger.info("%s: QAT val accuracy %.4f vs PTQ %.4f: keeping %s", preset.name, qat_val,
                    ptq_val, kept.upper())
        return qat_model if kept == "qat" else ptq_model


def _preset_options(ctx: Context, name: str) -> dict[str, Any]:
    cfg = ctx.recipe.stages.qat
    if name == "tflite":
        return {}
    return {"calibration": cfg.calibration, "percentile": cfg.percentile,
            "opset": ctx.recipe.stages.export.opset}


def _acc(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean()) if len(y) else 0.0


#: Evaluation samples the per-layer probe runs (the ones whose prediction changed first).
PROBE_SAMPLES = 32


def _probe_samples(reference: np.ndarray, candidate: np.ndarray, x: np.ndarray) -> np.ndarray:
    flipped = np.flatnonzero(reference.argmax(1) != candidate.argmax(1))
    rest = np.setdiff1d(np.arange(len(x)), flipped)
    return x[np.concatenate([flipped, rest])[:PROBE_SAMPLES]]


def _check_onnx(path: Path, reference: np.ndarray, x: np.ndarray, y: np.ndarray | None,
                cfg: Any, converted: nn.Module | None = None) -> dict[str, Any]:
    """The exported QDQ model, as ORT runs it on this CPU, must reproduce the PyTorch int8 model.

    Criteria (:func:`~edgecompress.export.int8_parity.judge_int8_parity`): top-1 agreement and
    the accuracy difference on the evaluation split, plus max |diff| if ``cfg.rtol`` is set. On
    failure the per-layer probe (:mod:`edgecompress.quant.parity_probe`) names the first layer
    where the engine diverges.

    Raises:
        ParityError: A criterion failed; the message lists every number, the first diverging
            layer and the recipe keys that relax the check.
    """
    import onnxruntime as ort

    from edgecompress.export.int8_parity import judge_int8_parity, parity_message
    from edgecompress.quant.parity_probe import engine_model, first_divergence

    model, rewritten = engine_model(path)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    out = np.concatenate([sess.run(None, {name: x[i:i + 256]})[0]
                          for i in range(0, len(x), 256)])
    record, failures = judge_int8_parity(
        reference, out, y, min_top1_agreement=cfg.min_top1_agreement,
        max_metric_diff_pp=cfg.max_metric_diff_pp, rtol=cfg.rtol)
    record["uint8_weight_rewrites"] = rewritten
    if failures:
        try:
            found = first_divergence(model, _probe_samples(reference, out, x), converted)
            layer = found.describe() if found else (
                "first diverging layer: none found (no int8 activation differs by more than 2 "
                f"steps on the {min(len(x), PROBE_SAMPLES)} probed samples; the difference "
                "arises after the last quantizer)")
        except Exception as exc:  # the probe only explains; the failure stands without it
            logger.warning("per-layer parity probe failed: %s", exc)
            layer = f"first diverging layer: unknown (the per-layer probe failed: {exc})"
        raise ParityError(parity_message(f"{path}: the exported int8 model", record, failures,
                                         layer))
    return record
