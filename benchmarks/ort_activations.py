"""Int8 on ONNX Runtime for SiLU / HardSwish / squeeze-excitation networks: FP32 vs int8 before vs
int8 after (sigmoid, mul and global pooling quantized, SiLU decomposed), 1 thread.

For each torchvision architecture (``--models``): train briefly on Fashion-MNIST (Debian's
``dataset-fashion-mnist``; scikit-learn's digits when absent) at a low resolution, then for each
evaluation size (``--sizes``):

1. export the FP32 ONNX and two int8 engines from the project's ORT preset for this CPU
   (``ort-x86`` resolved per ISA), PT2E PTQ (minmax), published through the ORT int8 build:
   ``int8 before`` with ``elementwise=False`` (only conv/linear/add quantized: what the preset
   did before) and ``int8 after`` (the preset as it is now);
2. top-1 agreement of each ORT int8 engine with its PyTorch int8 model on the eval images;
3. ORT per-node profiling (``SessionOptions.enable_profiling``): time per op type, and which
   op types run in float (everything that is not an int8 kernel nor a Q/DQ);
4. latency in interleaved rounds (fp32, before, after, fp32, ...; batch 1, 1 thread), every
   ratio the median of same-round ratios.

    python benchmarks/ort_activations.py --json benchmarks/results/ort_activations.json

Not a test: several minutes per model on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from int8_cpu import interleaved, load_data, resize, run_all, session, train  # noqa: E402

QDQ = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
#: int8 engines compared: preset attributes set on the ORT preset instance.
VARIANTS: dict[str, dict[str, bool]] = {
    "int8 before": {"elementwise": False, "global_pool_rewrite": False},
    "int8 after": {},  # the preset as it is
    # ablations (--variants): one change left out
    "no elementwise": {"elementwise": False},
    "no pool rewrite": {"global_pool_rewrite": False},
    "hardswish mul": {"hardswish_mul": True},
}


def build_model(arch: str) -> torch.nn.Module:
    from edgecompress.models.zoo import import_torchvision

    tv = import_torchvision()
    return getattr(tv.models, arch)(num_classes=10)


def conv_kinds(optimized: Path) -> dict[str, str]:
    """Node name -> ``depthwise`` / ``pointwise`` / ``other`` for the (QLinear)Convs of an
    ORT-optimized model (group == input channels; 1x1 kernel)."""
    import onnx

    model = onnx.load(str(optimized))
    inits = {i.name: i for i in model.graph.initializer}
    kinds = {}
    for node in model.graph.node:
        if "Conv" not in node.op_type:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        w_name = node.input[3] if node.op_type == "QLinearConv" else node.input[1]
        w = inits.get(w_name)
        shape = list(w.dims) if w is not None else []
        if group > 1 and len(shape) == 4 and shape[1] == 1:
            kinds[node.name] = "depthwise"
        elif len(shape) == 4 and shape[2:] == [1, 1]:
            kinds[node.name] = "pointwise"
        else:
            kinds[node.name] = "other"
    return kinds


def profile(path: Path, x1: np.ndarray, runs: int, work: Path,
            optimized: Path | None = None) -> dict[str, Any]:
    """Mean microseconds per run by op type, convs split by kind (depthwise / pointwise /
    other), and the 15 slowest nodes."""
    import onnxruntime as ort

    from edgecompress.backends.onnxruntime import INT8_DISABLED_OPTIMIZERS
    from edgecompress.quant.onnx_passes import INT8_KERNELS

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.enable_profiling = True
    so.profile_file_prefix = str(work / f"prof_{path.parent.name}_{path.stem}")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(INT8_DISABLED_OPTIMIZERS))
    name = sess.get_inputs()[0].name
    for _ in range(3):
        sess.run(None, {name: x1})
    sess.end_profiling()  # drop warm-up events
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(INT8_DISABLED_OPTIMIZERS))
    for _ in range(3):
        sess.run(None, {name: x1})
    for _ in range(runs):
        sess.run(None, {name: x1})
    events = json.loads(Path(sess.end_profiling()).read_text())
    by_op: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    by_node: dict[str, float] = defaultdict(float)
    total_runs = runs + 3
    for ev in events:
        if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time"):
            continue
        op = ev["args"].get("op_name", "?")
        by_op[op] += ev["dur"] / total_runs
        count[op] += 1
        by_node[f"{ev['name'][:-len('_kernel_time')]} ({op})"] += ev["dur"] / total_runs
    kinds = conv_kinds(optimized) if optimized is not None else {}
    by_kind: dict[str, float] = defaultdict(float)
    for node, us in by_node.items():
        kind = kinds.get(node.rsplit(" (", 1)[0])
        if kind is not None:
            by_kind[kind] += us
    total = sum(by_op.values())
    ops = {op: {"us": round(us, 1), "share": round(us / total, 4),
                "nodes": count[op] // total_runs}
           for op, us in sorted(by_op.items(), key=lambda kv: -kv[1])}
    float_ops = {op: v for op, v in ops.items() if op not in INT8_KERNELS and op not in QDQ}
    return {"total_us": round(total, 1), "by_op": ops,
            "float_ops_us": round(sum(v["us"] for v in float_ops.values()), 1),
            "qdq_us": round(sum(v["us"] for op, v in ops.items() if op in QDQ), 1),
            "conv_us_by_kind": {k: round(v, 1) for k, v in sorted(by_kind.items())},
            "slowest_nodes": dict(sorted(((k, round(v, 1)) for k, v in by_node.items()),
                                         key=lambda kv: -kv[1])[:15])}


def int8_engine(model: torch.nn.Module, example: torch.Tensor, calib: np.ndarray,
                x_eval: np.ndarray, settings: dict[str, bool],
                out: Path) -> tuple[Path, np.ndarray]:
    from edgecompress.backends import get_backend
    from edgecompress.quant.presets import get_preset, preset_for_target
    from edgecompress.quant.training import calibrate, predict

    preset = get_preset(preset_for_target("onnxruntime", None))
    for key, value in settings.items():
        setattr(preset, key, value)
    prepared = preset.prepare(model, example, qat=False)
    calibrate(prepared, calib)
    converted = preset.convert(prepared)
    reference = predict(converted, x_eval)
    qdq = preset.export(converted, example, out.with_suffix(".qdq.onnx"))
    engine = get_backend("onnxruntime").build(qdq, out, precision="int8")
    return engine, reference


def bench(arch: str, data: tuple[Any, ...], args: argparse.Namespace,
          work: Path) -> list[dict[str, Any]]:
    from edgecompress.export import export_onnx
    from edgecompress.quant.onnx_passes import kernel_census, load

    _, x_train, y_train, x_test, y_test = data
    torch.manual_seed(args.seed)
    model = build_model(arch)
    print(f"{arch}: training {args.epochs} epoch(s) at {args.train_size}px", flush=True)
    train(model, resize(x_train, args.train_size), y_train, args.epochs, args.seed)
    results = []
    for size in args.sizes:
        n_eval = args.eval if size <= 64 else args.eval_large
        x_eval = resize(x_test[:n_eval], size)
        calib = resize(x_train[:args.calibration], size)
        example = torch.from_numpy(x_eval[:2])
        tag = f"{arch}_{size}"
        paths = {"fp32": export_onnx(model, example, work / f"{tag}_fp32.onnx", opset=18,
                                     dynamic_batch=True)}
        refs = {}
        for key in args.variants:
            paths[key], refs[key] = int8_engine(model, example, calib, x_eval, VARIANTS[key],
                                                work / f"{tag}_{key.replace(' ', '_')}")
        sessions = {}
        rows: dict[str, Any] = {}
        for key, path in paths.items():
            opt = work / f"{tag}_{key.replace(' ', '_')}_opt.onnx"
            if key == "fp32":
                sessions[key] = session(path, optimized=opt)
            else:
                import onnxruntime as ort

                from edgecompress.backends.onnxruntime import INT8_DISABLED_OPTIMIZERS

                so = ort.SessionOptions()
                so.intra_op_num_threads = 1
                so.inter_op_num_threads = 1
                so.log_severity_level = 3
                so.optimized_model_filepath = str(opt)
                sessions[key] = ort.InferenceSession(
                    str(path), so, providers=["CPUExecutionProvider"],
                    disabled_optimizers=list(INT8_DISABLED_OPTIMIZERS))
            logits = run_all(sessions[key], x_eval)
            cen = kernel_census(load(opt))
            row = {"accuracy": float((logits.argmax(1) == y_test[:n_eval]).mean()),
                   "int8_kernels": cen["int8_kernels"],
                   "fp32_compute_nodes": len(cen["fp32_nodes"]),
                   "ops": cen["ops"]}
            if key in refs:
                row["agreement_with_pytorch_int8"] = float(
                    (logits.argmax(1) == refs[key].argmax(1)).mean())
                row["max_abs_diff_vs_pytorch_int8"] = float(np.abs(logits - refs[key]).max())
            row["profile"] = profile(path, x_eval[:1], args.profile_runs, work, opt)
            rows[key] = row
        timing = interleaved(sessions, x_eval[:1], args.rounds, args.runs, args.warmup)
        for key in paths:
            rows[key]["p50_ms"] = statistics.median(timing["samples"][key])
            rows[key]["speedup_vs_fp32"] = statistics.median(
                f / e for f, e in zip(timing["per_round"]["fp32"], timing["per_round"][key],
                                      strict=True))
            if key != "fp32" and "int8 before" in paths:
                rows[key]["speedup_vs_before"] = statistics.median(
                    b / e for b, e in zip(timing["per_round"]["int8 before"],
                                          timing["per_round"][key], strict=True))
            agree = rows[key].get("agreement_with_pytorch_int8")
            print(f"  {size}px {key:20s} p50 {rows[key]['p50_ms']:7.2f} ms "
                  f"x{rows[key]['speedup_vs_fp32']:.2f} vs fp32"
                  + (f", agree int8 ref {agree:.3f}" if agree is not None else "")
                  + f", float ops {rows[key]['profile']['float_ops_us']:.0f} us, Q/DQ "
                  f"{rows[key]['profile']['qdq_us']:.0f} us", flush=True)
        results.append({"arch": arch, "size": size, "eval_images": n_eval, "engines": rows})
    return results


def markdown(results: list[dict[str, Any]], env: dict[str, Any]) -> str:
    lines = [f"CPU: {env['model']} ({env['isa']}), ONNX Runtime, 1 thread, batch 1",
             "", "| model | px | engine | p50 ms | vs FP32 | vs int8 before | agree PyTorch int8 "
             "| int8 kernels | float ops time | Q/DQ time |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for key, row in res["engines"].items():
            prof = row["profile"]
            agree = row.get("agreement_with_pytorch_int8")
            before = row.get("speedup_vs_before")
            lines.append(
                f"| {res['arch']} | {res['size']} | {key} | {row['p50_ms']:.2f} | "
                f"{row['speedup_vs_fp32']:.2f}x | {'-' if before is None else f'{before:.2f}x'} "
                f"| {'-' if agree is None else f'{agree:.3f}'} | "
                f"{sum(row['int8_kernels'].values())} | "
                f"{100 * prof['float_ops_us'] / prof['total_us']:.0f} % | "
                f"{100 * prof['qdq_us'] / prof['total_us']:.0f} % |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mobilenet_v3_small", "mobilenet_v3_large",
                                                        "efficientnet_b0", "mobilenet_v2"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 32])
    parser.add_argument("--train", type=int, default=2000, help="training images")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-size", type=int, default=32)
    parser.add_argument("--eval", type=int, default=500, help="eval images at <= 64 px")
    parser.add_argument("--eval-large", type=int, default=100, help="eval images at > 64 px")
    parser.add_argument("--calibration", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--profile-runs", type=int, default=10)
    parser.add_argument("--variants", nargs="+", default=["int8 before", "int8 after"],
                        choices=list(VARIANTS), help="int8 engines besides fp32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from edgecompress.report import cpu_description

    env = cpu_description()
    data = load_data(args.train, max(args.eval, args.eval_large), args.seed)
    print(f"data: {data[0]}", flush=True)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.models:
            results += bench(arch, data, args, Path(tmp))
    table = markdown(results, env)
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": env, "dataset": data[0],
                                         "settings": vars(args) | {"json": str(args.json)},
                                         "results": results, "table": table}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
