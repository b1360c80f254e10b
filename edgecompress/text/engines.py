"""Engine stages of the text path: export (FP32 ONNX, optimized FP32, INT8) and bench.

Artifacts (``DIR/export/``):

- ``teacher.onnx``, ``student.onnx``: FP32, dynamic batch and sequence length, parity-checked;
- ``teacher.opt.onnx``, ``student.opt.onnx``: after ``onnxruntime.transformers.optimizer``
  (the FP32 engines, so the teacher baseline is the optimized one; Attention, SkipLayerNorm,
  BiasGelu fused on the TorchScript export, counted in ``metrics[role]["fused"]``);
- ``student.int8.onnx``: the INT8 engine (``quant.method``), its ORT kernels counted;
- ``teacher.int8.onnx`` (``quant.teacher_reference``): the FP32 teacher through ONNX Runtime's
  ``quantize_dynamic`` with the same settings, the reference engine of every int8 target.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.backends import get_backend
from edgecompress.errors import ModelError
from edgecompress.io import atomic_path, atomic_write_json
from edgecompress.stages.base import Stage, StageResult
from edgecompress.text.context import TextContext
from edgecompress.text.recipe import text_recipe_to_dict
from edgecompress.text.tflite import tflite_seq_lens, write_tflite_engines

logger = logging.getLogger(__name__)


def _padded(ctx: TextContext, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    from edgecompress.text.data import collate

    ids, mask = collate(ctx.encoded(split).head(n), ctx.pad_id)
    return ids.numpy(), mask.numpy()


class TextExportStage(Stage):
    """Writes the FP32, optimized FP32 and INT8 ONNX files."""

    name = "export"

    def config(self, ctx: TextContext) -> dict[str, Any]:
        raw = text_recipe_to_dict(ctx.recipe)
        return {"export": raw["export"], "quant": raw["quant"],
                "tflite_seq_lens": tflite_seq_lens(ctx)}

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
                               max_seq=model.config.max_position_embeddings,
                               exporter=cfg.exporter)
            parity = check_parity(path, ref, ids, mask, cfg.atol, role)
            opt = out_dir / f"{role}.opt.onnx"
            fused = optimize_transformer(path, opt)
            parity_opt = check_parity(opt, ref, ids, mask, cfg.atol, f"{role} (optimized)")
            metrics[role] = {"parity": parity, "parity_optimized": parity_opt, "fused": fused,
                             "size_bytes": path.stat().st_size}
            outputs.update({role: path, f"{role}_opt": opt})
            write_tflite_engines(ctx, model, role, out_dir, metrics, outputs)
            if role == "student":
                student, reference = model, ref
        int8 = out_dir / "student.int8.onnx"
        metrics["int8"] = self._quantize(ctx, student, opt, int8, example)
        disabled = self._disabled(ctx)
        if disabled:  # the session settings travel with the engine (the backend reads them)
            from edgecompress.backends.onnxruntime import engine_info_path

            outputs["student_int8_engine"] = engine_info_path(int8)
            atomic_write_json(engine_info_path(int8), {"disabled_optimizers": list(disabled)})
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
            quantize_dynamic_int8(opt, out, per_channel=q.per_channel, embeddings=q.embeddings)
            return {"method": q.method, "embeddings_int8": q.embeddings}
        if q.method == "ptq_static":
            from edgecompress.text.data import collate

            data, feeds = ctx.encoded("train"), []
            count = min(q.calibration_samples, len(data))
            for start in range(0, count, 16):
                i, m = collate(data.take(np.arange(start, min(start + 16, count))), ctx.pad_id)
                feeds.append((i.numpy(), m.numpy()))
            # QDQ annotates weight MatMuls: quantize the plain export, not the optimized graph
            # (its fused Attention keeps the packed Q/K/V weight in float, and the static
            # quantizer's type inference fails on the contrib ops); ORT's session fuses
            # LayerNorm/GELU itself.
            quantize_static_int8(opt.with_name("student.onnx"), out, feeds,
                                 per_channel=q.per_channel)
            return {"method": q.method, "calibration_samples": min(q.calibration_samples,
                                                                   len(data))}
        from edgecompress.text.qat import qat_int8

        return qat_int8(ctx, student, out, example)


class TextBenchStage(Stage):
    """Per target: accuracy on the test split through ONNX Runtime, and latency at
    ``seq_len`` of the student's engine, of the optimized FP32 teacher and (int8 targets) of
    the FP32 student, timed in the same interleaved rounds."""

    name = "bench"

    def config(self, ctx: TextContext) -> dict[str, Any]:
        return {"targets": text_recipe_to_dict(ctx.recipe)["targets"]}

    def inputs(self, ctx: TextContext) -> dict[str, Path]:
        return {"export": ctx.run_dir / "export" / "stage.json"}

    def run(self, ctx: TextContext) -> StageResult:
        from edgecompress.report import environment

        results, outputs = [], {}
        # Targets with the same input and timing settings share one interleaved benchmark:
        # every engine of the group is timed in the same rounds (A B C, B C A, ...).
        groups: dict[tuple, list[Any]] = {}
        for target in ctx.recipe.targets:
            groups.setdefault(_timing_key(target), []).append(target)
        by_name = {}
        for group in groups.values():
            for entry in bench_text_targets(ctx, group):
                by_name[entry["name"]] = entry
        for target in ctx.recipe.targets:
            entry = by_name[target.name]
            results.append(entry)
            for key in ("artifact", "teacher_artifact", "fp32_artifact"):
                if entry.get(key):
                    outputs[f"{target.name}:{key}"] = ctx.run_dir / entry[key]
        path = ctx.stage_dir(self.name) / "results.json"
        atomic_write_json(path, {"environment": environment(), "targets": results})
        outputs["results"] = path
        return StageResult(outputs=outputs, metrics={t["name"]: t["status"] for t in results})


def engine_accuracy(runner: Any, ctx: TextContext, seq_len: int | None = None,
                    batch: int = 64) -> tuple[float, np.ndarray]:
    """Test accuracy and logits of a backend runner (any backend taking the ids + mask feed),
    ``batch`` texts read and tokenized at a time; padded per batch, or to exactly ``seq_len``
    for an engine of static shape (TFLite)."""
    from edgecompress.text.data import collate

    data = ctx.encoded("test")
    out = []
    for start in range(0, len(data), batch):
        ids, mask = collate(data.take(np.arange(start, min(start + batch, len(data)))),
                            ctx.pad_id, length=seq_len)
        out.append(runner.run({"input_ids": ids.numpy(), "attention_mask": mask.numpy()}))
    logits = np.concatenate(out)
    return float((logits.argmax(1) == data.labels).mean()), logits


def _copy(src: Path, dst: Path) -> Path:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return dst


def _timing_key(target: Any) -> tuple:
    return (target.seq_len, target.batch_size, target.warmup, target.runs, target.max_seconds,
            min(target.min_runs, target.runs) if target.max_seconds is not None else None)


def bench_text_targets(ctx: TextContext, targets: list[Any]) -> list[dict[str, Any]]:
    """Report entries (plus raw samples for results.json) of targets sharing input and timing
    settings: their engines (teacher, FP32 student, each INT8 engine) are timed together in
    interleaved rounds and every speedup is a median of same-round ratios."""
    import hashlib

    from edgecompress.bench import measure_interleaved, parity_summary
    from edgecompress.bench.speed import speed_fields, throughput_fields
    from edgecompress.text.data import fixed_length_input
    from edgecompress.text.models import encoder_macs
    from edgecompress.text.stages import load_run_model
    from edgecompress.text.train import predict

    export = ctx.run_dir / "export"
    first = targets[0]
    tok = ctx.tokenizer
    ids, mask = fixed_length_input(ctx.encoded("test"), first.seq_len, first.batch_size,
                                   tok.cls_token_id, tok.sep_token_id)
    feed = {"input_ids": ids, "attention_mask": mask}
    engines: dict[tuple, str] = {}  # (bytes, disabled optimizers, threads) -> engine name
    opened: dict[str, tuple[Path, list[str] | None, int]] = {}
    plans, skipped = [], {}
    for target in targets:
        arts = _engines(ctx, target)
        if isinstance(arts, str):
            logger.warning("%s: skipped: %s", target.name, arts)
            skipped[target.name] = {"name": target.name, "backend": target.backend,
                                    "precision": target.precision, "threads": target.threads,
                                    "seq_len": target.seq_len, "status": "skipped",
                                    "reason": arts}
            continue
        if target.precision == "int8":  # the FP32 twin: the same student, FP32, same runtime
            arts["fp32"] = export / "student.opt.onnx"
        if ctx.recipe.quant.teacher_reference:  # teacher + quantize_dynamic, same rounds
            arts["reference"] = export / "teacher.int8.onnx"
        disabled = TextExportStage._disabled(ctx) if target.precision == "int8" else None
        names = {}
        for role, path in arts.items():
            off = disabled if role == "student" else None
            key = (hashlib.sha256(path.read_bytes()).hexdigest(), tuple(off or ()),
                   target.threads)
            if key not in engines:
                engines[key] = f"{target.name}/{role}"
                opened[engines[key]] = (path, off, target.threads)
            names[role] = engines[key]
        plans.append((target, arts, names, disabled))
    if not plans:
        return [skipped[t.name] for t in targets]
    measured: dict[str, dict[str, Any]] = {}
    calls = {}
    for name, (path, _, threads) in opened.items():
        # The shared backends' runners (ORT reads the engine's session settings next to it);
        # TFLite engines have a static (1, seq_len) input, so their texts are padded to it.
        static = path.suffix == ".tflite"
        runner = get_backend("tflite" if static else "onnxruntime").load(path, threads=threads)
        acc, logits = engine_accuracy(runner, ctx, first.seq_len if static else None)
        calls[name] = runner.timed_call(feed)
        measured[name] = {"accuracy": acc, "logits": logits}
    result = measure_interleaved(
        calls, warmup=first.warmup, runs=first.runs,
        threads={name: threads for name, (_, _, threads) in opened.items()},
        batch_size=first.batch_size, max_seconds=first.max_seconds,
        min_runs=min(first.min_runs, first.runs), input_shape=list(ids.shape))
    student_model = load_run_model(ctx.final_student_dir())
    reference = predict(student_model, ctx.encoded("test"), ctx.pad_id)
    macs = encoder_macs(student_model, first.seq_len)
    entries = []
    for target, arts, names, disabled in plans:
        s_lat, t_lat = (result.stats[names[r]] for r in ("student", "teacher"))
        entry = {
            "name": target.name, "backend": target.backend, "precision": target.precision,
            "threads": target.threads, "seq_len": target.seq_len, "status": "ok", "reason": "",
            "artifact": str(arts["student"].relative_to(ctx.run_dir)),
            "size_bytes": arts["student"].stat().st_size,
            "teacher_artifact": str(arts["teacher"].relative_to(ctx.run_dir)),
            "teacher_size_bytes": arts["teacher"].stat().st_size,
            "accuracy": measured[names["student"]]["accuracy"],
            "teacher_accuracy": measured[names["teacher"]]["accuracy"],
            "latency_ms": s_lat.to_dict(), "teacher_latency_ms": t_lat.to_dict(),
            **speed_fields(result, student=names["student"], teacher=names["teacher"],
                           fp32_twin=names.get("fp32")),
            "parity": parity_summary(reference, measured[names["student"]]["logits"]),
            **throughput_fields(macs, s_lat.p50, batch_size=target.batch_size,
                                threads=target.threads, precision=target.precision),
            "samples_ms": {"student": s_lat.samples_ms, "teacher": t_lat.samples_ms},
        }
        if "fp32" in names:
            entry.update(fp32_artifact=str(arts["fp32"].relative_to(ctx.run_dir)),
                         fp32_size_bytes=arts["fp32"].stat().st_size,
                         fp32_accuracy=measured[names["fp32"]]["accuracy"])
            entry["samples_ms"]["fp32"] = result.stats[names["fp32"]].samples_ms
        if "reference" in names:
            entry["reference"] = _reference_entry(result, names, measured, arts["reference"],
                                                  ctx.run_dir)
            entry["samples_ms"]["reference"] = result.stats[names["reference"]].samples_ms
        if target.precision == "int8":
            from edgecompress.text.quant import kernel_report

            kr = kernel_report(arts["student"], disabled=disabled)
            entry["int8_kernels"] = kr["int8_kernels"]
            entry["fp32_nodes"] = kr["fp32_nodes"]
        for note in entry.get("notes") or []:
            logger.warning("%s: %s", target.name, note)
        logger.info("%s: accuracy %.4f, p50 %.3f ms, %.2fx vs teacher%s", target.name,
                    entry["accuracy"], s_lat.p50, entry["speedup_vs_teacher"] or 0.0,
                    " (noisy)" if entry.get("speedup_noisy") else "")
        entries.append(entry)
    by_name = {e["name"]: e for e in entries} | skipped
    return [by_name[t.name] for t in targets]


def _engines(ctx: TextContext, target: Any) -> dict[str, Path] | str:
    """The student's and the teacher's engine files of ``target`` in ``engines/<name>/``
    (built by the target's backend), or why there are none."""
    export, engine = ctx.run_dir / "export", ctx.run_dir / "engines" / target.name
    if target.profile:  # a profile's numbers are only true on a machine that matches it
        from edgecompress.targets import load_profile, machine_reasons

        mismatch = machine_reasons(load_profile(target.profile))
        if mismatch:
            return "; ".join(mismatch)
    if target.backend == "tflite":
        from edgecompress.text.tflite import tflite_path

        backend = get_backend("tflite")
        ok, reason = backend.availability()
        sources = {role: tflite_path(export, role, target.seq_len)
                   for role in ("student", "teacher")}
        if ok and not all(p.is_file() for p in sources.values()):
            ok, reason = False, "no TFLite engine was exported (see the export stage's log)"
        if not ok:
            return reason
        return {"student": backend.build(sources["student"], engine, precision="fp32"),
                "teacher": backend.build(sources["teacher"], engine / "teacher",
                                         precision="fp32")}
    src = export / ("student.int8.onnx" if target.precision == "int8" else "student.opt.onnx")
    return {"student": _copy(src, engine / "model.onnx"),
            "teacher": _copy(export / "teacher.opt.onnx", engine / "teacher" / "model.onnx")}


def _reference_entry(result: Any, names: dict[str, str], measured: dict[str, Any], path: Path,
                     run_dir: Path) -> dict[str, Any]:
    """``targets[].reference``: the teacher through ``quantize_dynamic``, timed in the same
    rounds as the student's engine; ``speedup_vs_reference`` = reference / student (median of
    same-round ratios; ``_cpu``: the same on CPU time, which a busy machine cannot move), so a
    user sees whether distillation paid over quantizing alone."""
    pair = result.paired_ratio(names["reference"], names["student"])
    cpu = result.paired_ratio(names["reference"], names["student"], cpu=True)
    return {"name": "teacher + quantize_dynamic", "artifact": str(path.relative_to(run_dir)),
            "size_bytes": path.stat().st_size,
            "accuracy": measured[names["reference"]]["accuracy"],
            "latency_ms": result.stats[names["reference"]].to_dict(),
            "speedup_vs_reference": pair["ratio"] if pair else None,
            "speedup_noisy": bool(pair and pair["noisy"]),
            "speedup_spread": pair["spread"] if pair else None,
            "speedup_vs_reference_cpu": cpu["ratio"] if cpu else None}
