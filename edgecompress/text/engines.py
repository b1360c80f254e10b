"""Engine stages of the text path: export (FP32 ONNX, optimized FP32, INT8) and bench.

Artifacts (``DIR/export/``):

- ``teacher.onnx``, ``student.onnx``: FP32, dynamic batch and sequence length, parity-checked;
- ``teacher.opt.onnx``, ``student.opt.onnx``: after ``onnxruntime.transformers.optimizer``
  (the FP32 engines, so the teacher baseline is the optimized one);
- ``student.int8.onnx``: the INT8 engine (``quant.method``), its ORT kernels counted.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import ModelError
from edgecompress.io import atomic_path, atomic_write_json
from edgecompress.stages.base import Stage, StageResult
from edgecompress.text.context import TextContext
from edgecompress.text.recipe import text_recipe_to_dict

logger = logging.getLogger(__name__)


def _padded(ctx: TextContext, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    from edgecompress.text.data import collate

    ids, mask = collate(ctx.encoded(split).ids[:n], ctx.pad_id)
    return ids.numpy(), mask.numpy()


class TextExportStage(Stage):
    """Writes the FP32, optimized FP32 and INT8 ONNX files."""

    name = "export"

    def config(self, ctx: TextContext) -> dict[str, Any]:
        raw = text_recipe_to_dict(ctx.recipe)
        return {"export": raw["export"], "quant": raw["quant"]}

    def inputs(self, ctx: TextContext) -> dict[str, Path]:
        return {"teacher": ctx.run_dir / "teacher" / "stage.json",
                "student": ctx.final_student_dir().parent / "stage.json"}

    def run(self, ctx: TextContext) -> StageResult:
        import torch

        from edgecompress.text.export import check_parity, export_onnx, optimize_transformer
        from edgecompress.text.quant import kernel_report
        from edgecompress.text.stages import load_run_model

        cfg, out_dir = ctx.recipe.export, ctx.stage_dir(self.name)
        ids, mask = _padded(ctx, "test", cfg.parity_samples)
        example = (torch.as_tensor(ids[:2]), torch.as_tensor(mask[:2]))
        metrics: dict[str, Any] = {}
        outputs: dict[str, Path] = {}
        models = {"teacher": ctx.teacher_dir, "student": ctx.final_student_dir()}
        for role, directory in models.items():
            model = load_run_model(directory)
            with torch.no_grad():
                ref = model(input_ids=torch.as_tensor(ids),
                            attention_mask=torch.as_tensor(mask)).logits.numpy()
            path = export_onnx(model, example, out_dir / f"{role}.onnx", cfg.opset,
                               max_seq=model.config.max_position_embeddings)
            parity = check_parity(path, ref, ids, mask, cfg.atol, role)
            opt = out_dir / f"{role}.opt.onnx"
            fused = optimize_transformer(path, opt)
            parity_opt = check_parity(opt, ref, ids, mask, cfg.atol, f"{role} (optimized)")
            metrics[role] = {"parity": parity, "parity_optimized": parity_opt, "fused": fused,
                             "size_bytes": path.stat().st_size}
            outputs.update({role: path, f"{role}_opt": opt})
            if role == "student":
                student, reference = model, ref
        int8 = out_dir / "student.int8.onnx"
        metrics["int8"] = self._quantize(ctx, student, opt, int8, example)
        from edgecompress.text.export import ort_logits, ort_session

        got = ort_logits(ort_session(int8), ids, mask)
        metrics["int8"]["top1_agreement"] = float((got.argmax(1) == reference.argmax(1)).mean())
        metrics["int8"]["max_abs_diff"] = float(np.abs(got - reference).max())
        report = kernel_report(int8, disabled=self._disabled(ctx))
        metrics["int8"].update(report)
        if report["int8_total"] == 0:
            raise ModelError(f"{int8}: ONNX Runtime runs no int8 kernel (ops: {report['ops']}); "
                             "the INT8 engine would silently be FP32")
        metrics["int8"]["size_bytes"] = int8.stat().st_size
        outputs["student_int8"] = int8
        path = out_dir / "kernels.json"
        atomic_write_json(path, metrics["int8"])
        outputs["kernels"] = path
        return StageResult(outputs=outputs, metrics=metrics)

    @staticmethod
    def _disabled(ctx: TextContext) -> list[str] | None:
        from edgecompress.text.quant import QDQ_DISABLED

        return QDQ_DISABLED if ctx.recipe.quant.method != "ptq_dynamic" else None

    def _quantize(self, ctx: TextContext, student, opt: Path, out: Path, example
                  ) -> dict[str, Any]:
        from edgecompress.text.quant import quantize_dynamic_int8, quantize_static_int8

        q = ctx.recipe.quant
        if q.method == "ptq_dynamic":
            quantize_dynamic_int8(opt, out, per_channel=q.per_channel)
            return {"method": q.method}
        if q.method == "ptq_static":
            from edgecompress.text.data import collate

            data, feeds = ctx.encoded("train"), []
            for start in range(0, min(q.calibration_samples, len(data)), 16):
                i, m = collate(data.ids[start:min(start + 16, q.calibration_samples)], ctx.pad_id)
                feeds.append((i.numpy(), m.numpy()))
            quantize_static_int8(opt, out, feeds,
                                 per_channel=q.per_channel)
            return {"method": q.method, "calibration_samples": min(q.calibration_samples,
                                                                   len(data))}
        from edgecompress.text.qat import qat_int8

        return qat_int8(ctx, student, out, example)


class TextBenchStage(Stage):
    """Per target: accuracy on the test split through ONNX Runtime, and latency at
    ``seq_len`` of the student's engine and of the optimized FP32 teacher, same run."""

    name = "bench"

    def config(self, ctx: TextContext) -> dict[str, Any]:
        return {"targets": text_recipe_to_dict(ctx.recipe)["targets"]}

    def inputs(self, ctx: TextContext) -> dict[str, Path]:
        return {"export": ctx.run_dir / "export" / "stage.json"}

    def run(self, ctx: TextContext) -> StageResult:
        from edgecompress.report import environment

        results, outputs = [], {}
        for target in ctx.recipe.targets:
            entry = bench_text_target(ctx, target)
            results.append(entry)
            for key in ("artifact", "teacher_artifact"):
                outputs[f"{target.name}:{key}"] = ctx.run_dir / entry[key]
        path = ctx.stage_dir(self.name) / "results.json"
        atomic_write_json(path, {"environment": environment(), "targets": results})
        outputs["results"] = path
        return StageResult(outputs=outputs, metrics={t["name"]: t["status"] for t in results})


def ort_accuracy(session: Any, ctx: TextContext, batch: int = 64) -> tuple[float, np.ndarray]:
    """Test accuracy of an ORT session and its logits."""
    from edgecompress.text.data import batches
    from edgecompress.text.export import ort_logits

    data = ctx.encoded("test")
    out = [ort_logits(session, i.numpy(), m.numpy())
           for i, m, _ in batches(data, batch, ctx.pad_id)]
    logits = np.concatenate(out)
    return float((logits.argmax(1) == data.labels).mean()), logits


def _copy(src: Path, dst: Path) -> Path:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return dst


def bench_text_target(ctx: TextContext, target: Any) -> dict[str, Any]:
    """One target's report entry (plus raw samples for results.json)."""
    import functools

    from edgecompress.bench import measure_latency, parity_summary
    from edgecompress.text.data import fixed_length_input
    from edgecompress.text.export import ort_session

    export = ctx.run_dir / "export"
    engine = ctx.run_dir / "engines" / target.name
    src = export / ("student.int8.onnx" if target.precision == "int8" else "student.opt.onnx")
    artifact = _copy(src, engine / "model.onnx")
    teacher_art = _copy(export / "teacher.opt.onnx", engine / "teacher" / "model.onnx")
    tok = ctx.tokenizer
    ids, mask = fixed_length_input(ctx.encoded("test"), target.seq_len, target.batch_size,
                                   tok.cls_token_id, tok.sep_token_id)
    disabled = TextExportStage._disabled(ctx) if target.precision == "int8" else None
    measured = {}
    for role, path in (("teacher", teacher_art), ("student", artifact)):
        session = ort_session(path, target.threads, disabled=disabled if role == "student"
                              else None)
        acc, logits = ort_accuracy(session, ctx)
        call = functools.partial(session.run, None, {"input_ids": ids, "attention_mask": mask})
        lat = measure_latency(call, warmup=target.warmup, runs=target.runs,
                              threads=target.threads, batch_size=target.batch_size,
                              max_seconds=target.max_seconds,
                              min_runs=min(target.min_runs, target.runs),
                              input_shape=list(ids.shape))
        measured[role] = {"accuracy": acc, "logits": logits, "latency": lat}
        logger.info("%s %s: accuracy %.4f, p50 %.3f ms", target.name, role, acc, lat.p50)
    from edgecompress.text.stages import load_run_model
    from edgecompress.text.train import predict

    reference = predict(load_run_model(ctx.final_student_dir()), ctx.encoded("test"), ctx.pad_id)
    s_lat, t_lat = measured["student"]["latency"], measured["teacher"]["latency"]
    entry = {
        "name": target.name, "backend": target.backend, "precision": target.precision,
        "threads": target.threads, "seq_len": target.seq_len, "status": "ok", "reason": "",
        "artifact": str(artifact.relative_to(ctx.run_dir)),
        "size_bytes": artifact.stat().st_size,
        "teacher_artifact": str(teacher_art.relative_to(ctx.run_dir)),
        "teacher_size_bytes": teacher_art.stat().st_size,
        "accuracy": measured["student"]["accuracy"],
        "teacher_accuracy": measured["teacher"]["accuracy"],
        "latency_ms": s_lat.to_dict(), "teacher_latency_ms": t_lat.to_dict(),
        "speedup_vs_teacher": t_lat.p50 / s_lat.p50 if s_lat.p50 > 0 else None,
        "parity": parity_summary(reference, measured["student"]["logits"]),
        "samples_ms": {"student": s_lat.samples_ms, "teacher": t_lat.samples_ms},
    }
    if target.precision == "int8":
        from edgecompress.text.quant import kernel_report

        kr = kernel_report(artifact, disabled=disabled)
        entry["int8_kernels"] = kr["int8_kernels"]
        entry["fp32_nodes"] = kr["fp32_nodes"]
    return entry
