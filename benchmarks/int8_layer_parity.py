"""Where does an ORT int8 engine part from its PyTorch int8 reference? Layer by layer.

Trains a torchvision model exactly as ``benchmarks/int8_cpu.py`` does (same data, seed, epochs,
BatchNorm re-estimation; the trained weights are cached in ``--cache``), builds the project's ORT
int8 engine for this CPU, then compares three views of the same int8 model:

* ``ref``: the PyTorch int8 model (PT2E converted, biases on the int32 grid);
* ``exact``: the engine file run by ORT with graph optimizations off (QDQ emulated in float);
* ``engine``: the engine file run by ORT fused (QLinearConv/QLinearAdd/...), as deployed;

at the logit level (top-1 agreement over all eval samples and over *decisive* samples, the
pipeline's own definition, :func:`edgecompress.export.int8_parity.decisive_agreement`) and at
every int8 activation (the QuantizeLinear outputs, matched to the PyTorch quantize nodes by
order), in steps of ``q - zero_point``: fraction of elements 1 step apart, more than 1 step
apart, and the max. A real mismatch (wrong fusion, requantization, pooling rounding) shows up
as a layer where ``engine`` is many steps from ``exact`` and ``ref`` on many elements; fused
rounding shows up as sparse 1-step differences that grow with depth.

    python benchmarks/int8_layer_parity.py --arch mobilenet_v2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from int8_cpu import build, load_data, recalibrate_bn, resize, run_all, session, train  # noqa: E402

import edgecompress  # noqa: E402,F401  (before torchvision)


def trained(arch: str, args: argparse.Namespace, data: tuple[Any, ...]) -> torch.nn.Module:
    model, _ = build(arch, 10)
    cache = args.cache / f"{arch}_e{args.epochs}_t{args.train_size}_n{args.train}_s{args.seed}.pt"
    if cache.is_file():
        model.load_state_dict(torch.load(cache))
        model.eval()
        return model
    _, x_train, y_train, _, _ = data
    train(model, resize(x_train, args.train_size), y_train, args.epochs, args.seed)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), cache)
    return model


def codes(model: Any, x: np.ndarray, optimize: bool) -> dict[str, np.ndarray]:
    """``q - zero_point`` of every activation QuantizeLinear output of the ONNX ``model``."""
    import onnxruntime as ort
    from onnx import numpy_helper

    from edgecompress.quant.parity_probe import _activation_quantizers, _with_quantizer_outputs

    qs = _activation_quantizers(model)
    inits = {i.name: i for i in model.graph.initializer}
    zps = {q.output[0]: int(numpy_helper.to_array(inits[q.input[2]]).reshape(-1)[0])
           for q in qs}
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    from edgecompress.backends.onnxruntime import INT8_DISABLED_OPTIMIZERS

    sess = ort.InferenceSession(_with_quantizer_outputs(model, qs), so,
                                providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(INT8_DISABLED_OPTIMIZERS))
    names = [q.output[0] for q in qs]
    out = sess.run(names, {sess.get_inputs()[0].name: x})
    return {n: np.asarray(a).astype(np.int32) - zps[n] for n, a in zip(names, out, strict=True)}


def steps(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    d = np.abs(a - b)
    return {"one": float(np.mean(d == 1)), "more": float(np.mean(d > 1)), "max": int(d.max())}


def agreement(ref: np.ndarray, cand: np.ndarray) -> dict[str, float]:
    from edgecompress.export.int8_parity import decisive_agreement

    dec, ties = decisive_agreement(ref, cand)
    return {"all": float(np.mean(ref.argmax(1) == cand.argmax(1))), "decisive": dec,
            "near_ties": ties, "max_abs_diff": float(np.abs(ref - cand).max())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--calibration", type=int, default=128)
    parser.add_argument("--bn-recalibrate", type=int, default=256)
    parser.add_argument("--probe", type=int, default=8, help="images probed layer by layer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "ec_int8")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from edgecompress.backends import get_backend
    from edgecompress.quant.onnx_passes import load
    from edgecompress.quant.parity_probe import isolated_op_codes, reference_codes
    from edgecompress.quant.presets import get_preset, preset_for_target
    from edgecompress.quant.training import calibrate, predict

    data = load_data(args.train, args.test, args.seed)
    _, x_train, _, x_test, y_test = data
    model = trained(args.arch, args, data)
    x_eval = resize(x_test, args.size)
    if args.bn_recalibrate:
        recalibrate_bn(model, resize(x_train[-args.bn_recalibrate:], args.size))
    with torch.no_grad():
        fp32 = torch.cat([model(torch.from_numpy(x_eval[i:i + 50]))
                          for i in range(0, len(x_eval), 50)]).numpy()
    example = torch.from_numpy(x_eval[:2])
    preset_name = preset_for_target("onnxruntime", None)
    preset = get_preset(preset_name)
    prepared = preset.prepare(model, example, qat=False)
    calibrate(prepared, resize(x_train[:args.calibration], args.size))
    converted = preset.convert(prepared)
    ref = predict(converted, x_eval)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        preset.export(converted, example, work / "qdq.onnx")
        artifact = get_backend("onnxruntime").build(work / "qdq.onnx", work / "engine",
                                                    precision="int8")
        from edgecompress.backends.onnxruntime import INT8_DISABLED_OPTIMIZERS

        engine = run_all(session(artifact, disabled=INT8_DISABLED_OPTIMIZERS), x_eval)
        exact = run_all(session(artifact, fused=False), x_eval)
        onnx_model = load(artifact)
        flips = np.flatnonzero(ref.argmax(1) != engine.argmax(1))
        keep = np.flatnonzero(ref.argmax(1) == engine.argmax(1))
        pick = np.concatenate([flips[:args.probe // 2], keep[:args.probe - min(len(flips),
                                                                               args.probe // 2)]])
        xp = x_eval[pick]
        c_engine, c_exact = codes(onnx_model, xp, True), codes(onnx_model, xp, False)
        names = list(c_engine)
        raw_ref = reference_codes(onnx_model, xp, converted)
        assert set(raw_ref) == set(names), "PyTorch and ONNX quantizers do not match"
        iso_engine = isolated_op_codes(onnx_model, raw_ref, optimize=True,
                                       disabled_optimizers=INT8_DISABLED_OPTIMIZERS)
        iso_exact = isolated_op_codes(onnx_model, raw_ref, optimize=False)
    from onnx import numpy_helper

    inits = {i.name: i for i in onnx_model.graph.initializer}
    from edgecompress.quant.parity_probe import _activation_quantizers as _aq

    zps = {q.output[0]: int(numpy_helper.to_array(inits[q.input[2]]).reshape(-1)[0])
           for q in _aq(onnx_model)}
    c_ref = {n: raw_ref[n] - zps[n] for n in names}
    from edgecompress.quant.parity_probe import _activation_quantizers, _origin

    origin = {q.output[0]: _origin(onnx_model, q).op_type
              for q in _activation_quantizers(onnx_model)}
    layers = [{"index": i, "tensor": n, "op": origin[n], "shape": list(c_ref[n].shape),
               "engine_vs_ref": steps(c_engine[n], c_ref[n]),
               "exact_vs_ref": steps(c_exact[n], c_ref[n]),
               "engine_vs_exact": steps(c_engine[n], c_exact[n]),
               "isolated_engine_vs_ref": (steps(iso_engine[n], raw_ref[n])
                                          if n in iso_engine else None),
               "isolated_exact_vs_ref": (steps(iso_exact[n], raw_ref[n])
                                         if n in iso_exact else None)}
              for i, n in enumerate(names)]
    ref_margin = np.sort(ref, 1)[:, -1] - np.sort(ref, 1)[:, -2]
    result = {
        "arch": args.arch, "settings": {k: str(v) for k, v in vars(args).items()},
        "accuracy": {"fp32": float(np.mean(fp32.argmax(1) == y_test)),
                     "ref": float(np.mean(ref.argmax(1) == y_test)),
                     "engine": float(np.mean(engine.argmax(1) == y_test))},
        "agreement": {"engine_vs_ref": agreement(ref, engine),
                      "exact_vs_ref": agreement(ref, exact),
                      "engine_vs_exact": agreement(exact, engine),
                      "ref_vs_fp32": agreement(fp32, ref)},
        "max_abs_logit": float(np.abs(ref).max()),
        "flipped": [{"index": int(i), "ref_margin": float(ref_margin[i]),
                     "margin_fraction_of_max": float(ref_margin[i] / np.abs(ref).max())}
                    for i in flips],
        "median_ref_margin": float(np.median(ref_margin)),
        "probed": [int(i) for i in pick], "layers": layers,
    }
    print(json.dumps({k: result[k] for k in ("accuracy", "agreement", "max_abs_logit",
                                             "median_ref_margin")}, indent=1))
    print("flipped (index, ref top-2 margin / max|logit|):",
          [(f["index"], round(f["margin_fraction_of_max"], 4)) for f in result["flipped"]])
    keys = ("engine_vs_ref", "exact_vs_ref", "engine_vs_exact", "isolated_engine_vs_ref",
            "isolated_exact_vs_ref")
    print(f"{'#':>3} {'op':18s} " + " ".join(f"{k[:22]:>22s}" for k in keys)
          + "   (fraction 1 step / fraction > 1 step / max steps)")
    for row in layers:
        cells = [f"{row[k]['one']:.4f}/{row[k]['more']:.4f}/{row[k]['max']:3d}"
                 if row[k] else "-" for k in keys]
        print(f"{row['index']:3d} {row['op']:18s} " + " ".join(f"{c:>22s}" for c in cells))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
