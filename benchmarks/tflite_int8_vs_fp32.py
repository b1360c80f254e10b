"""INT8 vs FP32 ``.tflite`` on this CPU: LiteRT + XNNPACK, batch 1, 1 thread (p50 speedup).

Models: the demo student (MobileNet-style, width 0.5, depth 1) trained on scikit-learn digits
(8x8x1; accuracy of every variant and the top-1 agreement of the int8 ``.tflite`` with the
PyTorch int8 model are reported too), and the same family at larger inputs (latency only,
random weights, calibrated on random data). INT8 is litert-torch PT2E PTQ through
``edgecompress.quant.tflite.TFLitePreset`` (fully integer, int8 interface). Engines are timed in
interleaved rounds in one process (background load hits both alike) with the project's harness
(``Runner.timed_call`` -> ``Interpreter.invoke``), and cross-checked with ai-edge-litert's
bundled benchmark tool. This CPU with XNNPACK stands in for an Arm phone: the ratio, not the
absolute time, is what carries over (and only roughly: x86 VNNI vs Arm sdot).
With ``--zoo`` also torchvision's MobileNetV2 and ResNet-18 at 3x224x224 (random weights,
latency only): the models of ``benchmarks/int8_cpu.py``, to compare XNNPACK's int8 gain with
ONNX Runtime's on the same CPU. Prints a table and writes
``benchmarks/results/tflite_int8_vs_fp32.json`` (``--out`` to keep another CPU's results).

    python benchmarks/tflite_int8_vs_fp32.py [--rounds 5 --runs 200] [--zoo --out FILE]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from edgecompress.backends import get_backend
from edgecompress.bench import measure_latency
from edgecompress.bench.accuracy import timed_call
from edgecompress.bench.litert_benchmark import run_litert_benchmark
from edgecompress.export.tflite import export_tflite, inspect_tflite
from edgecompress.io import atomic_write_json
from edgecompress.models.tiny import build_builtin
from edgecompress.quant.tflite import TFLitePreset
from edgecompress.report import environment

# (name, in_channels, size, width): the demo student, then larger inputs of the same family.
CONFIGS = [("demo student 1x8x8 (digits)", 1, 8, 0.5),
           ("mobilenet w0.5 1x32x32", 1, 32, 0.5),
           ("mobilenet w1.0 3x96x96", 3, 96, 1.0)]
#: ``--zoo``: torchvision's own definitions at 3x224x224 (random weights, latency only), the
#: models of benchmarks/int8_cpu.py, so the two CPU runtimes can be compared on one CPU.
ZOO = ("mobilenet_v2", "resnet18")


def zoo_model(arch: str) -> torch.nn.Module:
    """torchvision's ``arch`` (10 classes) with BatchNorm statistics from random batches."""
    from edgecompress.models.zoo import import_torchvision

    torch.manual_seed(0)
    model = getattr(import_torchvision().models, arch)(num_classes=10)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 224, 224))
    return model.eval()


def train_digits(epochs: int) -> tuple[torch.nn.Module, object]:
    from edgecompress.data import load_dataset

    bundle = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    model = build_builtin("mobilenet", num_classes=10, in_channels=1, width=0.5, depth=1)
    x, y = torch.from_numpy(bundle.train.x), torch.from_numpy(bundle.train.y)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return model.eval(), bundle


def quantize(model: torch.nn.Module, calib: np.ndarray, out: Path) -> tuple[Path, object]:
    preset = TFLitePreset()
    example = torch.from_numpy(calib[:2])
    prepared = preset.prepare(model, example, qat=False)
    with torch.no_grad():
        for i in range(0, len(calib), 32):
            prepared(torch.from_numpy(calib[i:i + 32]))
    converted = preset.convert(prepared)
    return preset.export(converted, example, out), converted


def time_pair(paths: dict[str, Path], shape: tuple[int, ...], rounds: int,
              runs: int) -> dict[str, dict]:
    backend = get_backend("tflite")
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    samples: dict[str, list[float]] = {k: [] for k in paths}
    runners = {k: backend.load(p, threads=1) for k, p in paths.items()}
    try:
        for _ in range(rounds):
            for key, runner in runners.items():
                stats = measure_latency(timed_call(runner, x), warmup=20, runs=runs)
                samples[key] += stats.samples_ms
        xnn = {k: r.xnnpack for k, r in runners.items()}
    finally:
        for r in runners.values():
            r.close()
    return {k: {"p50_ms": float(np.percentile(v, 50)), "p90_ms": float(np.percentile(v, 90)),
                "mean_ms": float(np.mean(v)), "runs": len(v), "xnnpack": xnn[k]}
            for k, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=200, help="timed calls per engine per round")
    parser.add_argument("--epochs", type=int, default=10, help="digits training epochs")
    parser.add_argument("--zoo", action="store_true",
                        help="also torchvision " + " and ".join(ZOO) + " at 3x224x224")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "tflite_int8_vs_fp32.json")
    args = parser.parse_args()
    rows = []
    student, bundle = train_digits(args.epochs)
    configs = list(CONFIGS) + ([(f"torchvision {arch} 3x224x224", 3, 224, arch) for arch in ZOO]
                               if args.zoo else [])
    with tempfile.TemporaryDirectory() as tmp:
        for name, cin, size, width in configs:
            if isinstance(width, str):
                model = zoo_model(width)
                calib = np.random.default_rng(1).standard_normal(
                    (32, cin, size, size)).astype(np.float32)
            elif size == 8:
                model, calib = student, bundle.train.x[:256]
            else:
                torch.manual_seed(0)
                model = build_builtin("mobilenet", num_classes=10, in_channels=cin,
                                      width=width, depth=1).eval()
                calib = np.random.default_rng(1).standard_normal(
                    (64, cin, size, size)).astype(np.float32)
            shape = (1, cin, size, size)
            stem = f"{width}_{size}"
            fp32 = export_tflite(model, torch.from_numpy(calib[:1]), Path(tmp) / f"{stem}.fp32"
                                 ".tflite")
            int8, converted = quantize(model, calib, Path(tmp) / f"{stem}.int8.tflite")
            found = inspect_tflite(int8)
            timing = time_pair({"fp32": fp32, "int8": int8}, shape, args.rounds, args.runs)
            tool = {k: run_litert_benchmark(p, threads=1, warmup=20, runs=200)
                    for k, p in (("fp32", fp32), ("int8", int8))}
            row = {"model": name, "input_shape": list(shape),
                   "fp32": timing["fp32"], "int8": timing["int8"],
                   "speedup_p50": timing["fp32"]["p50_ms"] / timing["int8"]["p50_ms"],
                   "int8_fully_integer": found.fully_integer, "int8_fp32_nodes": found.fp32_nodes,
                   "size_bytes": {"fp32": fp32.stat().st_size, "int8": int8.stat().st_size},
                   "bundled_tool_mean_ms": {k: v["mean"] for k, v in tool.items()}}
            if size == 8:
                row["accuracy"] = digits_accuracy(student, converted, fp32, int8, bundle)
            rows.append(row)
    print(f"{'model':30s} {'fp32 p50 ms':>11s} {'int8 p50 ms':>11s} {'speedup':>8s} "
          f"{'tool fp32/int8 ms':>18s} {'fully int8':>10s}")
    for r in rows:
        t = r["bundled_tool_mean_ms"]
        print(f"{r['model']:30s} {r['fp32']['p50_ms']:11.4f} {r['int8']['p50_ms']:11.4f} "
              f"{r['speedup_p50']:7.2f}x {t['fp32']:8.2f}/{t['int8']:<8.2f} "
              f"{str(r['int8_fully_integer']):>10s}")
    acc = rows[0]["accuracy"]
    print("digits test accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in acc.items()))
    atomic_write_json(args.out, {"environment": environment(), "threads": 1, "batch_size": 1,
                                 "rounds": args.rounds, "runs_per_round": args.runs,
                                 "note": "this x86 CPU with XNNPACK as a stand-in for Arm",
                                 "rows": rows})
    print(f"wrote {args.out}")


def digits_accuracy(student: torch.nn.Module, converted: torch.nn.Module, fp32: Path,
                    int8: Path, bundle: object) -> dict[str, float]:
    """Test accuracy of each variant and top-1 agreement of the int8 .tflite with PyTorch int8."""
    x, y = bundle.test.x, bundle.test.y
    with torch.no_grad():
        torch_fp32 = student(torch.from_numpy(x)).numpy()
        torch_int8 = converted(torch.from_numpy(x)).numpy()
    backend = get_backend("tflite")
    with backend.load(fp32) as a, backend.load(int8) as b:
        tfl_fp32, tfl_int8 = a.run(x), b.run(x)
    return {"torch_fp32": float(np.mean(torch_fp32.argmax(1) == y)),
            "torch_int8": float(np.mean(torch_int8.argmax(1) == y)),
            "tflite_fp32": float(np.mean(tfl_fp32.argmax(1) == y)),
            "tflite_int8": float(np.mean(tfl_int8.argmax(1) == y)),
            "tflite_int8_vs_torch_int8_top1_agreement":
                float(np.mean(tfl_int8.argmax(1) == torch_int8.argmax(1))),
            "samples": int(len(y))}


if __name__ == "__main__":
    main()
