"""The text family's export steps (run by the shared export stage): FP32 ONNX, optimized FP32
and INT8 engine files (the shared bench stage builds and times them through the backends, like
every family's).

Artifacts (``DIR/export/``):

- ``teacher.onnx``, ``student.onnx``: FP32, dynamic batch and sequence length, parity-checked;
- ``teacher.opt.onnx``, ``student.opt.onnx``: after ``onnxruntime.transformers.optimizer``
  (the FP32 engines, so the teacher baseline is the optimized one; Attention, SkipLayerNorm,
  BiasGelu fused on the TorchScript export, counted in ``metrics[role]["fused"]``);
- ``student.int8.onnx``: the INT8 engine (``quant.method``), its ORT kernels counted, with
  ``student.int8.onnx.engine.json`` (the session settings it is served with);
- ``teacher.int8.onnx`` (``quant.teacher_reference``): the FP32 teacher through ONNX Runtime's
  ``quantize_dynamic`` with the same settings, the reference engine of every int8 target;
- ``<role>.s<L>.tflite``: FP32 flatbuffers at each TFLite target's sequence length.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.backends import get_backend
from edgecompress.errors import ModelError
from edgecompress.io import atomic_write_json
from edgecompress.stages.export import ExportSteps
from edgecompress.text.context import TextContext
from edgecompress.text.recipe import text_recipe_to_dict
from edgecompress.text.tflite import tflite_seq_lens, write_tflite_engines

logger = logging.getLogger(__name__)


def _padded(ctx: TextContext, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    from edgecompress.text.data import collate

    ids, mask = collate(ctx.encoded(split).head(n), ctx.pad_id)
    return ids.numpy(), mask.numpy()


class TextExportSteps(ExportSteps):
    """The text family's export (run by the shared export stage): the FP32, optimized FP32,
    TFLite and INT8 files."""

    ctx: TextContext

    def config(self) -> dict[str, Any]:
        ctx = self.ctx
        raw = text_recipe_to_dict(ctx.recipe)
        return {"export": raw["export"], "quant": raw["quant"],
                "tflite_seq_lens": tflite_seq_lens(ctx), "engine_descriptions": 1,
                "tensorrt_int8": _tensorrt_int8(ctx)}

    def inputs(self) -> dict[str, Path]:
        ctx = self.ctx
        return {"teacher": ctx.run_dir / "teacher" / "stage.json",
                "student": ctx.final_student_dir().parent / "stage.json"}

    def models(self) -> dict[str, Any]:
        from edgecompress.text.stages import load_run_model

        return {"teacher": load_run_model(self.ctx.teacher_dir),
                "student": load_run_model(self.ctx.final_student_dir())}

    def _parity_batch(self) -> tuple[np.ndarray, np.ndarray]:
        if not hasattr(self, "_batch"):
            self._batch = _padded(self.ctx, "test", self.ctx.recipe.export.parity_samples)
        return self._batch

    def export_role(self, role: str, model: Any, out_dir: Path
                    ) -> tuple[dict[str, Path], dict[str, Any]]:
        """ONNX (dynamic batch and sequence) and ORT's optimized graph, both parity-checked on
        a padded test batch; TFLite flatbuffers at each TFLite target's length."""
        import torch

        from edgecompress.text.export import check_parity, export_onnx, optimize_transformer

        ctx, cfg = self.ctx, self.ctx.recipe.export
        ids, mask = self._parity_batch()
        example = (torch.as_tensor(ids[:2]), torch.as_tensor(mask[:2]))
        with torch.no_grad():
            ref = model(input_ids=torch.as_tensor(ids),
                        attention_mask=torch.as_tensor(mask)).logits.numpy()
        path = export_onnx(model, example, out_dir / f"{role}.onnx", cfg.opset,
                           max_seq=model.config.max_position_embeddings, exporter=cfg.exporter)
        parity = check_parity(path, ref, ids, mask, cfg.atol, role)
        opt = out_dir / f"{role}.opt.onnx"
        fused = optimize_transformer(path, opt)
        parity_opt = check_parity(opt, ref, ids, mask, cfg.atol, f"{role} (optimized)")
        local: dict[str, Any] = {role: {"parity": parity, "parity_optimized": parity_opt,
                                        "fused": fused, "size_bytes": path.stat().st_size}}
        outputs = {role: path, f"{role}_opt": opt}
        write_tflite_engines(ctx, model, role, out_dir, local, outputs)
        self._skipped_tflite = local.get("tflite")
        if role == "student":
            self._reference, self._example = ref, example
        return outputs, local[role]

    def finish(self, models: dict[str, Any], out_dir: Path, outputs: dict[str, Path],
               metrics: dict[str, Any]) -> None:
        """The INT8 engine (``quant.method``), its parity and kernel census; the teacher
        through ``quantize_dynamic`` (``quant.teacher_reference``); the TensorRT INT8 file."""
        from edgecompress.text.quant import kernel_report

        ctx = self.ctx
        if self._skipped_tflite is not None:
            metrics["tflite"] = self._skipped_tflite
        ids, mask = self._parity_batch()
        student, reference, example = models["student"], self._reference, self._example
        opt = outputs["student_opt"]
        int8 = out_dir / "student.int8.onnx"
        metrics["int8"] = self._quantize(ctx, student, opt, int8, example)
        disabled = self._disabled(ctx)
        # The INT8 files are finished ORT engines: their description (the session settings
        # they are served with) travels with them, and the backend publishes them as they are.
        outputs["student_int8_engine"] = _describe_engine(int8, disabled)
        with get_backend("onnxruntime").load(int8) as runner:
            got = runner.run({"input_ids": ids, "attention_mask": mask})
        metrics["int8"]["top1_agreement"] = float((got.argmax(1) == reference.argmax(1)).mean())
        metrics["int8"]["max_abs_diff"] = float(np.abs(got - reference).max())
        report = kernel_report(int8, disabled=disabled)
        metrics["int8"].update(report)
        if report["int8_total"] == 0:
            raise ModelError(f"{int8}: ONNX Runtime runs no int8 kernel (ops: {report['ops']}); "
                             "the INT8 engine would silently be FP32")
        metrics["int8"]["size_bytes"] = int8.stat().st_size
        outputs["student_int8"] = int8
        if ctx.recipe.quant.teacher_reference:
            from edgecompress.text.quant import quantize_dynamic_int8

            ref_path = quantize_dynamic_int8(outputs["teacher_opt"], out_dir / "teacher.int8.onnx",
                                             per_channel=ctx.recipe.quant.per_channel,
                                             embeddings=ctx.recipe.quant.embeddings)
            ref_report = kernel_report(ref_path)
            metrics["teacher_int8"] = {
                "method": "quantize_dynamic", "size_bytes": ref_path.stat().st_size,
                **{k: ref_report[k] for k in ("int8_kernels", "int8_total", "fp32_nodes",
                                              "fp32_embeddings", "int8_embeddings")}}
            outputs["teacher_int8"] = ref_path
            outputs["teacher_int8_engine"] = _describe_engine(ref_path, None)
        if _tensorrt_int8(ctx):
            outputs["student_trt_int8"], metrics["tensorrt_int8"] = self._tensorrt(
                ctx, out_dir)
        path = out_dir / "kernels.json"
        atomic_write_json(path, metrics["int8"])
        outputs["kernels"] = path

    def _tensorrt(self, ctx: TextContext, out_dir: Path) -> tuple[Path, dict[str, Any]]:
        """``student.trt.int8.onnx`` for TensorRT INT8 targets: static Q/DQ of the weight
        MatMuls with int8 symmetric activations (TensorRT's form; it has no dynamic INT8),
        calibrated on training texts, from the plain export; linted for TensorRT here, before
        an engine build on the device."""
        from edgecompress.quant.trt_lint import check_tensorrt_compat
        from edgecompress.text.quant import quantize_static_int8

        path = out_dir / "student.trt.int8.onnx"
        feeds = _calibration_feeds(ctx)
        quantize_static_int8(out_dir / "student.onnx", path, feeds,
                             per_channel=ctx.recipe.quant.per_channel, for_tensorrt=True)
        lint = check_tensorrt_compat(path, require_qdq=True)
        return path, {"method": "ptq_static (int8 symmetric activations)",
                      "calibration_samples": sum(len(i) for i, _ in feeds),
                      "qdq_nodes": lint.qdq_nodes, "size_bytes": path.stat().st_size}

    @staticmethod
    def _disabled(ctx: TextContext) -> list[str] | None:
        from edgecompress.text.quant import QDQ_DISABLED

        return QDQ_DISABLED if ctx.recipe.quant.method != "ptq_dynamic" else None

    def _quantize(self, ctx: TextContext, student, opt: Path, out: Path, example
                  ) -> dict[str, Any]:
        from edgecompress.text.quant import quantize_dynamic_int8, quantize_static_int8

        q = ctx.recipe.quant
        if q.method == "ptq_dynamic":
            quantize_dynamic_int8(opt, out, per_channel=q.per_channel, embeddings=q.embeddings)
            return {"method": q.method, "embeddings_int8": q.embeddings}
        if q.method == "ptq_static":
            feeds = _calibration_feeds(ctx)
            # QDQ annotates weight MatMuls: quantize the plain export, not the optimized graph
            # (its fused Attention keeps the packed Q/K/V weight in float, and the static
            # quantizer's type inference fails on the contrib ops); ORT's session fuses
            # LayerNorm/GELU itself.
            quantize_static_int8(opt.with_name("student.onnx"), out, feeds,
                                 per_channel=q.per_channel)
            return {"method": q.method,
                    "calibration_samples": sum(len(i) for i, _ in feeds)}
        from edgecompress.text.qat import qat_int8

        return qat_int8(ctx, student, out, example)


def _tensorrt_int8(ctx: TextContext) -> bool:
    """Whether a target needs the TensorRT INT8 file."""
    return any(t.backend == "tensorrt" and t.precision == "int8" for t in ctx.recipe.targets)


def _calibration_feeds(ctx: TextContext) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first ``quant.calibration_samples`` training texts, 16 per padded batch."""
    from edgecompress.text.data import collate

    data, feeds = ctx.encoded("train"), []
    count = min(ctx.recipe.quant.calibration_samples, len(data))
    for start in range(0, count, 16):
        i, m = collate(data.take(np.arange(start, min(start + 16, count))), ctx.pad_id)
        feeds.append((i.numpy(), m.numpy()))
    return feeds


def _describe_engine(path: Path, disabled: list[str] | None) -> Path:
    """Write ``<path>.engine.json``: the file is an INT8 engine as it is, served with
    ``disabled`` graph optimizers off (see ``OnnxRuntimeBackend._publish_finished``)."""
    from edgecompress.backends.onnxruntime import engine_info_path

    info = engine_info_path(path)
    atomic_write_json(info, {"disabled_optimizers": list(disabled or ())})
    return info
