"""INT8 vs FP32 on this CPU: ResNet-18 and MobileNetV2 at 3x224x224, ONNX Runtime, 1 thread.

For each architecture (torchvision's own definition):

1. train a few epochs on Fashion-MNIST (Debian's ``dataset-fashion-mnist``; scikit-learn's
   digits when it is absent) at a lower resolution, as three-channel images, so the logits mean
   something; re-estimate the BatchNorm statistics at 224x224 (``--bn-recalibrate``, no
   weight change) and evaluate there (bilinear upsampling);
2. export the FP32 ONNX (dynamic batch) and build the engines from it:
   - ``fp32``: the FP32 model on ORT;
   - ``ours``: the project's int8 preset for this CPU (``ort-x86`` resolved by
     :mod:`edgecompress.isa`: 7-bit weights without VNNI, full range with VNNI), PT2E PTQ
     (minmax, 128 calibration images), published through the ORT int8 engine build;
   - ``ort qs``: ONNX Runtime's ``quantize_static`` from the same FP32 ONNX and calibration
     images (QDQ, per-channel, uint8 activations, int8 weights), run as a user would;
   - ``ort qs rr``: the same with ``reduce_range=True`` (ORT's advice for CPUs without VNNI);
   - ``ours fb`` (``--latency-fallback``): ours with the convs whose int8 kernel profiles
     slower than their FP32 kernel kept in FP32 (:mod:`conv_fallback`), when there are any;
3. measure accuracy, top-1 agreement with FP32 and with the int8 model's exact semantics (ours:
   the PyTorch int8 model; ORT's: its own QDQ file run unfused, i.e. what the int8 math should
   give) over all samples and over the *decisive* ones (the pipeline's parity criterion,
   :func:`edgecompress.export.int8_parity.decisive_agreement`: reference top-2 margin above
   2 % of max |logit|; the near-tie count is shown), and latency in interleaved rounds
   (fp32, ours, qs, qs rr, fp32, ...; batch 1, 1 thread), every ratio the median of same-round
   ratios; GMAC/s and fraction of the ISA's
   int8 peak (formula in the JSON); int8 kernel census of ORT's optimized graph.

    python benchmarks/int8_cpu.py --json benchmarks/results/int8_cpu.json

``--train-size`` and ``--epochs`` set how well the models learn: 3 epochs at 112 px by default
(2 epochs at 64 px, the earlier default, left weak 224 px models whose int8 decisions sat on
near-ties; ``benchmarks/int8_layer_parity.py`` shows that the engine/reference differences are
single-step roundings amplified with depth, not a wrong op). ``--threads`` sets torch's threads
for training (1: the machine is shared); the load average (1/5/15 min) before and after timing
is recorded in the JSON.

Prints a markdown table. Not a test: about 30 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

FASHION = Path("/usr/share/datasets/fashion-mnist")


# --- models: torchvision's own definitions ---------------------------------------------------

def build(arch: str, num_classes: int) -> tuple[nn.Module, str]:
    """torchvision's model (``import_torchvision`` carries the CPU-wheel import fix)."""
    from edgecompress.models.zoo import import_torchvision

    tv = import_torchvision()
    return getattr(tv.models, arch)(num_classes=num_classes), f"torchvision {tv.__version__}"


# --- data --------------------------------------------------------------------------------------

def _idx(path: Path) -> np.ndarray:
    raw = gzip.open(path).read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_data(train_n: int, test_n: int, seed: int) -> tuple[Any, ...]:
    rng = np.random.default_rng(seed)
    if (FASHION / "train-images-idx3-ubyte.gz").is_file():
        name = "Fashion-MNIST (Debian dataset-fashion-mnist)"
        xtr, ytr = _idx(FASHION / "train-images-idx3-ubyte.gz"), _idx(
            FASHION / "train-labels-idx1-ubyte.gz")
        xte, yte = _idx(FASHION / "t10k-images-idx3-ubyte.gz"), _idx(
            FASHION / "t10k-labels-idx1-ubyte.gz")
    else:
        from sklearn.datasets import load_digits

        name = "scikit-learn digits"
        d = load_digits()
        x, y = (d.images * (255 / 16)).astype(np.uint8), d.target
        order = rng.permutation(len(y))
        xtr, ytr, xte, yte = x[order[:1400]], y[order[:1400]], x[order[1400:]], y[order[1400:]]
    tr = rng.permutation(len(ytr))[:train_n]
    te = rng.permutation(len(yte))[:test_n]
    norm = lambda a: ((a.astype(np.float32) / 255.0) - 0.5) / 0.5  # noqa: E731
    x_train = np.repeat(norm(xtr[tr])[:, None], 3, axis=1)
    x_test = np.repeat(norm(xte[te])[:, None], 3, axis=1)
    return name, x_train, ytr[tr].astype(np.int64), x_test, yte[te].astype(np.int64)


def resize(x: np.ndarray, size: int) -> np.ndarray:
    out = [F.interpolate(torch.from_numpy(x[i:i + 64]), size=(size, size), mode="bilinear",
                         align_corners=False).numpy() for i in range(0, len(x), 64)]
    return np.concatenate(out).astype(np.float32)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> None:
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * ((len(x) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        order = np.random.default_rng(seed + epoch).permutation(len(x))
        t0, total = time.time(), 0.0
        for i in range(0, len(x), 64):
            b = order[i:i + 64]
            loss = F.cross_entropy(model(torch.from_numpy(x[b])), torch.from_numpy(y[b]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(b)
        print(f"  epoch {epoch + 1}/{epochs}: loss {total / len(x):.3f} "
              f"({time.time() - t0:.0f} s)", flush=True)
    model.eval()


# --- engines -----------------------------------------------------------------------------------

def recalibrate_bn(model: nn.Module, x: np.ndarray, batch: int = 32) -> None:
    """Re-estimate the BatchNorm running statistics on ``x`` (no weight changes), then eval.

    Trained at 64 px and run at 224 px, a network keeps the 64 px statistics, and its logits
    at 224 px were near-constant (ResNet-18: 12 % accuracy on 10 classes, every engine
    predicting the same class), which leaves top-1 agreement meaningless.
    """
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None  # cumulative average over all batches
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            model(torch.from_numpy(x[i:i + batch]))
    model.eval()


def session(path: Path | str, *, optimized: Path | None = None, fused: bool = True,
            disabled: tuple[str, ...] = ()) -> Any:
    """A 1-thread ORT session; ``disabled``: optimizers to turn off (the int8 engine's)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not fused:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(disabled))


def run_all(sess: Any, x: np.ndarray) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 8]})[0] for i in range(0, len(x), 8)])


def census(optimized: Path) -> dict[str, Any]:
    from edgecompress.quant.onnx_passes import kernel_census, load

    return kernel_census(load(optimized))


def ort_quantize_static(fp32: Path, out: Path, calib: np.ndarray, reduce_range: bool) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = session(fp32).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{name: calib[i:i + 16]} for i in range(0, len(calib), 16)])

        def get_next(self):  # noqa: ANN202 - ORT's interface
            return next(self.batches, None)

    pre = out.with_name(out.stem + "_pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True, reduce_range=reduce_range,
                    calibrate_method=CalibrationMethod.MinMax)
    return out


def interleaved(sessions: dict[str, Any], x1: np.ndarray, rounds: int, runs: int,
                warmup: int) -> dict[str, Any]:
    """Per engine: all samples (ms); per round: each engine's median (for same-round ratios)."""
    for sess in sessions.values():
        name = sess.get_inputs()[0].name
        for _ in range(warmup):
            sess.run(None, {name: x1})
    samples: dict[str, list[float]] = {k: [] for k in sessions}
    per_round: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for key, sess in sessions.items():
            name = sess.get_inputs()[0].name
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                sess.run(None, {name: x1})
                times.append((time.perf_counter() - t0) * 1e3)
            samples[key] += times
            per_round[key].append(statistics.median(times))
    return {"samples": samples, "per_round": per_round}


def bench_arch(arch: str, data: tuple[Any, ...], args: argparse.Namespace,
               work: Path) -> dict[str, Any]:
    from edgecompress.backends import get_backend
    from edgecompress.export import export_onnx
    from edgecompress.isa import cpu_info
    from edgecompress.models.stats import count_macs
    from edgecompress.quant.presets import get_preset, preset_for_target
    from edgecompress.quant.training import calibrate, predict

    _, x_train, y_train, x_test, y_test = data
    model, origin = build(arch, 10)
    print(f"{arch} ({origin}): training {args.epochs} epochs at {args.train_size}px", flush=True)
    train(model, resize(x_train, args.train_size), y_train, args.epochs, args.seed)
    x_eval = resize(x_test, args.size)
    calib = resize(x_train[:args.calibration], args.size)
    if args.bn_recalibrate:
        recalibrate_bn(model, resize(x_train[-args.bn_recalibrate:], args.size))
    macs = count_macs(model, (3, args.size, args.size))
    example = torch.from_numpy(x_eval[:2])
    fp32_path = export_onnx(model, example, work / f"{arch}_fp32.onnx", opset=18,
                            dynamic_batch=True)
    preset_name = preset_for_target("onnxruntime", None)
    preset = get_preset(preset_name)
    prepared = preset.prepare(model, example, qat=False)
    calibrate(prepared, calib)
    converted = preset.convert(prepared)
    reference = predict(converted, x_eval)
    preset.export(converted, example, work / f"{arch}_ours_qdq.onnx")
    backend = get_backend("onnxruntime")
    ours = backend.build(work / f"{arch}_ours_qdq.onnx", work / f"{arch}_ours", precision="int8")
    qs = ort_quantize_static(fp32_path, work / f"{arch}_qs.onnx", calib, reduce_range=False)
    qs_rr = ort_quantize_static(fp32_path, work / f"{arch}_qs_rr.onnx", calib,
                                reduce_range=True)
    paths = {"fp32": fp32_path, "ours": ours, "ort qs": qs, "ort qs rr": qs_rr}
    ours_keys = {"ours"}
    fallback = None
    if args.latency_fallback:
        # Convs whose int8 kernel profiled slower than the FP32 one stay FP32 ("ours fb").
        from conv_fallback import slower_in_int8

        from edgecompress.backends.onnxruntime import INT8_DISABLED_OPTIMIZERS

        for key in ("fp32", "ours"):
            session(paths[key], optimized=work / f"{arch}_{key}_opt.onnx",
                    disabled=INT8_DISABLED_OPTIMIZERS if key == "ours" else ())
        from edgecompress.quant.annotate import module_name

        fx_to_layer = {n.name: module_name(n) for n in converted.graph.nodes
                       if n.op == "call_function" and "conv" in str(n.target)}
        fallback = slower_in_int8((fp32_path, work / f"{arch}_fp32_opt.onnx"),
                                  (ours, work / f"{arch}_ours_opt.onnx"), fx_to_layer, x_eval[:1],
                                  args.profile_runs, work, INT8_DISABLED_OPTIMIZERS,
                                  args.fallback_margin)
        print(f"  latency fallback: {fallback['layers']} "
              f"{'' if fallback['matched'] else fallback['reason']}", flush=True)
        for kind, agg in fallback.get("by_kind", {}).items():
            print(f"  {kind:9s} {agg['convs']:3d} convs: FP32 {agg['fp32_us']:8.0f} us, int8 "
                  f"{agg['int8_us']:8.0f} us ({agg['fp32_over_int8']:.2f}x)", flush=True)
        if fallback["layers"]:
            fb_preset = get_preset(preset_name)
            prepared = fb_preset.prepare(model, example, qat=False, skip=fallback["layers"])
            calibrate(prepared, calib)
            fb_converted = fb_preset.convert(prepared)
            fb_reference = predict(fb_converted, x_eval)
            fb_preset.export(fb_converted, example, work / f"{arch}_fb_qdq.onnx")
            paths["ours fb"] = backend.build(work / f"{arch}_fb_qdq.onnx", work / f"{arch}_fb",
                                             precision="int8")
            ours_keys.add("ours fb")
    from edgecompress.backends.onnxruntime import INT8_DISABLED_OPTIMIZERS

    sessions = {k: session(p, optimized=work / f"{arch}_{k.replace(' ', '_')}_opt.onnx",
                           disabled=INT8_DISABLED_OPTIMIZERS if k in ours_keys else ())
                for k, p in paths.items()}
    logits = {k: run_all(s, x_eval) for k, s in sessions.items()}
    exact = {"ours": reference,
             "ort qs": run_all(session(qs, fused=False), x_eval),
             "ort qs rr": run_all(session(qs_rr, fused=False), x_eval)}
    if "ours fb" in paths:
        exact["ours fb"] = fb_reference
    load = [os.getloadavg()]
    timing = interleaved(sessions, x_eval[:1], args.rounds, args.runs, args.warmup)
    load.append(os.getloadavg())
    cpu = cpu_info()
    from edgecompress.export.int8_parity import decisive_agreement

    rows = {}
    for key in paths:
        p50 = statistics.median(timing["samples"][key])
        ratios = [f / e for f, e in zip(timing["per_round"]["fp32"], timing["per_round"][key],
                                        strict=True)]
        gmacs = macs / (p50 * 1e6)
        precision = "fp32" if key == "fp32" else "int8"
        peak = cpu.peak_gmacs(precision)
        cen = census(work / f"{arch}_{key.replace(' ', '_')}_opt.onnx")
        rows[key] = {
            "accuracy": float((logits[key].argmax(1) == y_test).mean()),
            "agreement_with_fp32": float((logits[key].argmax(1)
                                          == logits["fp32"].argmax(1)).mean()),
            "agreement_with_int8_reference": (float((logits[key].argmax(1)
                                                     == exact[key].argmax(1)).mean())
                                              if key in exact else None),
            # the pipeline's own criterion: agreement on samples whose reference top-2
            # margin is not a near-tie (edgecompress.export.int8_parity.decisive_agreement)
            "agreement_with_int8_reference_decisive": (decisive_agreement(exact[key],
                                                                          logits[key])[0]
                                                       if key in exact else None),
            "near_ties_in_int8_reference": (decisive_agreement(exact[key], logits[key])[1]
                                            if key in exact else None),
            "max_abs_diff_vs_int8_reference": (float(np.abs(logits[key] - exact[key]).max())
                                               if key in exact else None),
            "p50_ms": p50, "speedup_vs_fp32": statistics.median(ratios),
            "round_ratios": ratios, "gmacs_per_s": gmacs,
            "fraction_of_peak": gmacs / peak if peak else None,
            "peak_formula": cpu.peak_formula(precision),
            "int8_kernels": cen["int8_kernels"], "fp32_nodes": len(cen["fp32_nodes"]),
            "size_bytes": Path(paths[key]).stat().st_size,
        }
        print(f"  {key:10s} acc {rows[key]['accuracy']:.4f} p50 {p50:8.2f} ms "
              f"x{rows[key]['speedup_vs_fp32']:.2f} vs fp32", flush=True)
    return {"arch": arch, "definition": origin, "macs": macs, "preset": preset_name,
            "channel_padding": json.loads((Path(ours).parent / "engine.json").read_text())
            .get("channel_padding", {}),
            "latency_fallback": fallback, "load_average_during_timing": load,
            "accuracy_int8_reference": float((reference.argmax(1) == y_test).mean()),
            "engines": rows}


def markdown(results: list[dict[str, Any]], env: dict[str, Any]) -> str:
    lines = [f"CPU: {env['model']} ({env['isa']}; flags {', '.join(env['flags'])}), 1 thread, "
             "batch 1, 3x224x224",
             "", "| model | engine | accuracy | agree FP32 | agree int8 ref | "
             "agree int8 ref, decisive (near-ties) | p50 ms | vs FP32 | GMAC/s | % of peak | "
             "int8 kernels | FP32 convs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for key, row in res["engines"].items():
            name = f"ours ({res['preset']})" if key == "ours" else key
            ref = row["agreement_with_int8_reference"]
            decisive = (f"{row['agreement_with_int8_reference_decisive']:.3f} "
                        f"({row['near_ties_in_int8_reference']})" if ref is not None else "-")
            frac = row["fraction_of_peak"]
            lines.append(
                f"| {res['arch']} | {name} | {100 * row['accuracy']:.2f} % | "
                f"{row['agreement_with_fp32']:.3f} | {'-' if ref is None else f'{ref:.3f}'} | "
                f"{'-' if ref is None else decisive} | "
                f"{row['p50_ms']:.2f} | {row['speedup_vs_fp32']:.2f}x | "
                f"{row['gmacs_per_s']:.1f} | {'-' if frac is None else f'{100 * frac:.0f} %'} | "
                f"{sum(row['int8_kernels'].values())} | {row['fp32_nodes']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--train", type=int, default=3000, help="training images")
    parser.add_argument("--test", type=int, default=300, help="evaluation images (at 224)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=112,
                        help="training resolution (64 px left weak 224 px models whose int8 "
                             "decisions sat on near-ties)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--calibration", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-fallback", action="store_true",
                        help="also build 'ours fb': convs that profile slower in int8 than in "
                             "FP32 kept in FP32 (benchmarks/conv_fallback.py)")
    parser.add_argument("--profile-runs", type=int, default=10)
    parser.add_argument("--fallback-margin", type=float, default=1.25,
                        help="keep a conv FP32 when its int8 kernel takes > margin x FP32's")
    parser.add_argument("--bn-recalibrate", type=int, default=256,
                        help="training images that re-estimate BatchNorm statistics at --size "
                             "(0: keep the --train-size statistics)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for training and calibration (ORT runs 1 thread)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    from edgecompress.report import cpu_description

    env = cpu_description()
    data = load_data(args.train, args.test, args.seed)
    print(f"data: {data[0]}; train {len(data[2])}, eval {len(data[4])}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        results = [bench_arch(arch, data, args, Path(tmp)) for arch in args.arch]
    table = markdown(results, env)
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        load = {"before": load_before, "after": os.getloadavg(),
                "timing_per_arch": [r["load_average_during_timing"] for r in results]}
        args.json.write_text(json.dumps({"environment": env, "dataset": data[0],
                                         "load_average_1_5_15min": load,
                                         "settings": vars(args) | {"json": str(args.json)},
                                         "results": results, "table": table}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
