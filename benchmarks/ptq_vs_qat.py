"""PTQ vs QAT on the same pruned student: ONNX Runtime's own ``quantize_static`` against ours.

Takes a finished run with the qat stage (the demo by default) and compares, on its test split
and with the project's latency harness (ONNX Runtime, 1 thread, same process, interleaved):

- ``fp32``: the pruned float student (``export/student.onnx``);
- ``ort quantize_static``: ONNX Runtime's PTQ of that ONNX (QDQ, uint8 activations, int8
  per-channel weights, MinMax calibration on the run's saved calibration set), i.e. what a user
  gets from ORT alone;
- ``ours ptq <method>``: our ``ort-x86`` preset calibrated with minmax / percentile / entropy;
- ``ours qat (as trained)``: QAT retrained here exactly as the stage does it, without the
  stage's final comparison with PTQ (``compare_with_ptq: false``);
- ``ours qat (stage output)``: the run's QAT model (``qat/ort-x86/student.onnx``): the trained
  QAT model, or PTQ if QAT did not beat it on the validation split (see the run's report).

Each int8 model is published through the same ORT int8 engine build (uint8 rewrite, int32 bias,
kernel census), so the int8 kernel counts are printed too.

    python benchmarks/ptq_vs_qat.py --run runs/demo --json benchmarks/results/ptq_vs_qat.json

Prints a table and writes JSON. Not a test: it takes a minute or two.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def _ort_quantize_static(fp32: Path, out: Path, calib: np.ndarray) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": calib[i:i + 32]} for i in range(0, len(calib), 32)])

        def get_next(self):
            return next(self.batches, None)

    pre = out.with_name("pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True, calibrate_method=CalibrationMethod.MinMax)
    return out


def _our_ptq(ctx, method: str, out: Path, calib: np.ndarray) -> Path:
    import torch

    from edgecompress.quant.presets import get_preset
    from edgecompress.quant.training import calibrate
    from edgecompress.stages.common import load_float_student

    preset = get_preset("ort-x86", calibration=method)
    example = torch.from_numpy(ctx.bundle.train.x[:2])
    prepared = preset.prepare(load_float_student(ctx), example, qat=False)
    calibrate(prepared, calib)
    return preset.export(preset.convert(prepared), example, out)


def _trained_qat(ctx, out: Path, calib: np.ndarray) -> Path:
    """QAT as trained, without the stage's PTQ comparison (``compare_with_ptq: false``)."""
    import torch

    from edgecompress.quant.presets import get_preset
    from edgecompress.stages.base import Context
    from edgecompress.stages.common import load_float_student, load_teacher
    from edgecompress.stages.qat import QatStage
    from edgecompress.training import predict_logits

    recipe = ctx.recipe.model_copy(deep=True)
    recipe.stages.qat.compare_with_ptq = False
    ctx = Context(recipe, ctx.run_dir, ctx.dist)
    cfg, cpu = recipe.stages.qat, torch.device("cpu")
    teacher_logits = torch.from_numpy(predict_logits(load_teacher(ctx).cpu().eval(),
                                                     ctx.bundle.train.x, cpu))
    preset = get_preset("ort-x86", calibration=cfg.calibration, percentile=cfg.percentile)
    example = torch.from_numpy(ctx.bundle.train.x[:2])
    converted, _, _ = QatStage()._quantize(ctx, preset, load_float_student(ctx).eval(), example,
                                           teacher_logits, calib, list(cfg.keep_fp32))
    return preset.export(converted, example, out)


def main(argv: list[str] | None = None) -> int:
    """Build every variant, measure accuracy and latency, print the table, save JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"),
                        help="A finished run directory with the qat stage (ort-x86 preset).")
    parser.add_argument("--runs", type=int, default=300, help="Timed runs per model per round.")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds (median kept).")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/ptq_vs_qat.json"))
    args = parser.parse_args(argv)

    import torch

    from edgecompress.backends import get_backend
    from edgecompress.bench import benchmark_runner
    from edgecompress.data import load_calibration
    from edgecompress.distributed import DistInfo
    from edgecompress.quant.presets import preset_for_target
    from edgecompress.recipe import parse_recipe
    from edgecompress.report import environment
    from edgecompress.stages.base import Context

    # ort-x86 resolves per CPU (ort-x86-vnni / ort-x86-avx2): the run's directory is named so.
    qat_model = args.run / "qat" / preset_for_target("onnxruntime", None) / "student.onnx"
    if not qat_model.is_file():
        print(f"error: {qat_model} not found: run the demo first (make demo) or pass --run",
              file=sys.stderr)
        return 2
    recipe = parse_recipe(json.loads((args.run / "recipe.json").read_text()))
    ctx = Context(recipe, args.run.resolve(), DistInfo(0, 1, 0, torch.device("cpu")))
    bundle = ctx.bundle
    calib, _ = load_calibration(args.run / "data")
    backend = get_backend("onnxruntime")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sources = {"fp32 (pruned student)": (args.run / "export" / "student.onnx", "fp32"),
                   "ort quantize_static": (_ort_quantize_static(
                       args.run / "export" / "student.onnx", tmp / "ort_ptq.onnx", calib), "int8")}
        for method in ("minmax", "percentile", "entropy"):
            sources[f"ours ptq {method}"] = (_our_ptq(ctx, method, tmp / f"ptq_{method}.onnx",
                                                      calib), "int8")
        sources["ours qat (as trained)"] = (_trained_qat(ctx, tmp / "qat_trained.onnx", calib),
                                            "int8")
        sources["ours qat (stage output)"] = (qat_model, "int8")
        engines = {}
        for i, (name, (src, precision)) in enumerate(sources.items()):
            artifact = backend.build(src, tmp / f"engine{i}", precision=precision)
            engines[name] = (artifact, backend.inspect(artifact, precision=precision))
        p50s: dict[str, list[float]] = {name: [] for name in engines}
        acc: dict[str, float] = {}
        for _ in range(args.rounds):  # interleaved, so drift hits every variant alike
            for name, (artifact, _) in engines.items():
                with backend.load(artifact, threads=1) as runner:
                    res = benchmark_runner(runner, bundle.test.x, bundle.test.y, warmup=20,
                                           runs=args.runs, batch_size=1)
                p50s[name].append(res["latency_ms"]["p50"])
                acc[name] = res["accuracy"]
    rows = []
    for name, (_, info) in engines.items():
        rows.append({"variant": name, "accuracy": acc[name],
                     "p50_ms": float(np.median(p50s[name])),
                     "int8_kernels": info.get("int8_kernels", {}),
                     "fp32_nodes": len(info.get("fp32_nodes", []))})
    base = rows[0]["p50_ms"]
    print(f"{'variant':<24} {'accuracy':>9} {'p50 ms':>9} {'vs fp32':>8} {'int8 kernels':>13} "
          f"{'fp32 convs':>10}")
    for r in rows:
        r["speedup_vs_fp32"] = base / r["p50_ms"]
        print(f"{r['variant']:<24} {r['accuracy']:>9.4f} {r['p50_ms']:>9.4f} "
              f"{r['speedup_vs_fp32']:>7.2f}x {sum(r['int8_kernels'].values()):>13} "
              f"{r['fp32_nodes']:>10}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"run": str(args.run), "test_samples": int(len(bundle.test.y)),
                                     "rounds": args.rounds, "runs": args.runs, "rows": rows,
                                     "environment": environment()}, indent=2))
    print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
