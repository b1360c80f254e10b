"""A/B of the int32-bias reference (quant/int32_bias.py) on torchvision models: top-1 agreement of
the ORT int8 engine (fused kernels) with the PyTorch int8 model, its biases float (PT2E's
convert as is) vs snapped to the engine's int32 grid, from the same calibrated model.

    python benchmarks/int32_bias_ab.py mobilenet_v2 > out.json

Trains 2 epochs at 32 px (cheaper than int8_cpu.py's 64 px), evaluates 300 images at 224 px.
"""
import copy
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from int8_cpu import build, load_data, recalibrate_bn, resize, run_all, session, train  # noqa: E402

from edgecompress.backends import get_backend  # noqa: E402
from edgecompress.backends.onnxruntime import INT8_DISABLED_OPTIMIZERS  # noqa: E402
from edgecompress.quant.presets import OnnxQdqPreset, get_preset, preset_for_target  # noqa: E402
from edgecompress.quant.training import calibrate, predict  # noqa: E402


def main() -> int:
    torch.set_num_threads(2)
    _, xtr, ytr, xte, yte = load_data(3000, 300, 0)
    out = {}
    for arch in sys.argv[1:]:
        model, _ = build(arch, 10)
        train(model, resize(xtr, 32), ytr, 2, 0)
        xe, calib = resize(xte, 224), resize(xtr[:128], 224)
        recalibrate_bn(model, resize(xtr[-256:], 224))
        ex = torch.from_numpy(xe[:2])
        preset = get_preset(preset_for_target("onnxruntime", None))
        prep = preset.prepare(model, ex, qat=False)
        calibrate(prep, calib)
        work = Path(tempfile.mkdtemp())
        res = {}
        for snap in (False, True):
            conv = (preset.convert(copy.deepcopy(prep)) if snap
                    else OnnxQdqPreset.convert(preset, copy.deepcopy(prep)))
            ref = predict(conv, xe)
            preset.export(conv, ex, work / f"q{snap}.onnx")
            eng = get_backend("onnxruntime").build(work / f"q{snap}.onnx", work / f"e{snap}",
                                                   precision="int8")
            lo = run_all(session(eng, disabled=INT8_DISABLED_OPTIMIZERS), xe)
            res["int32 bias" if snap else "float bias"] = {
                "agreement": float((lo.argmax(1) == ref.argmax(1)).mean()),
                "max_abs_diff": float(np.abs(lo - ref).max()),
                "accuracy_engine": float((lo.argmax(1) == yte).mean()),
                "accuracy_reference": float((ref.argmax(1) == yte).mean())}
            print(arch, res, file=sys.stderr, flush=True)
        out[arch] = res
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
