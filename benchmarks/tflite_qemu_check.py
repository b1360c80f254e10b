"""ARM functional check: run the ``.tflite`` files under qemu-user with an aarch64 Python and
the aarch64 ai-edge-litert wheel, and compare the outputs with this x86 machine's.

Correctness only, never latency (qemu emulates; its timings mean nothing).

How the aarch64 side is built (only the Debian and PyPI registries are reachable here; every
step is cached under ``--cache``, default ``~/.cache/edgecompress/qemu-aarch64``):

1. ``qemu-aarch64-static`` from Debian's ``qemu-user-static`` (``apt-get install
   qemu-user-static``; needs root once). No binfmt registration is needed: the script calls
   qemu explicitly with ``-L <sysroot>``.
2. A sysroot with Debian's arm64 Python 3.11: ``dpkg --add-architecture arm64; apt-get update``,
   then ``apt-get download python3.11-minimal:arm64 libpython3.11-stdlib:arm64 libc6:arm64 ...``
   and ``dpkg-deb -x`` into the sysroot (nothing is installed system-wide, so the host's
   python3.11 is untouched; multiarch cannot co-install both interpreters).
3. The aarch64 wheels with the host's pip: ``pip install --target <site> --platform
   manylinux2014_aarch64 --python-version 3.11 --only-binary=:all: ai-edge-litert==2.3.0
   numpy==2.4.6``.
4. A fake ``/proc/cpuinfo`` (a Neoverse-N1-like Armv8.2 with asimddp) inside the sysroot:
   qemu-user 7.2 shows the guest the host's x86 cpuinfo, on which the cpuinfo library used
   by LiteRT/XNNPACK finds no Arm core and dereferences NULL while creating the interpreter.
   qemu resolves guest paths in the ``-L`` prefix first, so the fake file is what it reads.

5. The emulated CPU is pinned to ``QEMU_CPU=neoverse-n1`` (Armv8.2 + dotprod, the class of core
   the android-arm64 profile asks for: asimd, asimddp), matching the fake cpuinfo. Measured
   here: with qemu 7.2's default ``max`` CPU (which also advertises SVE/SME/i8mm) XNNPACK's
   int8 outputs differ from x86 by up to 12 LSB on random inputs and change most digits
   predictions, while with ``neoverse-n1`` or ``cortex-a76`` they are bitwise equal to x86;
   TFLite's reference kernels agree under every model. The ``max`` result is not confirmed on
   hardware (qemu's emulation of the newer extensions is the likelier culprit): run it with
   ``--cpu max`` to see it.

Check: the demo student (MobileNet-style w0.5 d1, trained briefly on digits) as FP32 and as
fully integer INT8 ``.tflite``; the test split runs on both sides through the same code path
(int8 models are fed their int8 input tensor, so raw int8 outputs are compared). INT8 outputs
must be bitwise equal; FP32 outputs are compared with max |diff| and top-1 agreement (XNNPACK's
x86 and NEON float kernels sum in different orders, so last-bit differences are expected).
Exit 0 when the check passes, 1 when it fails, 0 with a SKIP line when the setup is impossible.

    python benchmarks/tflite_qemu_check.py [--samples 359]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

DEBS = ["python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6",
        "libgcc-s1", "libstdc++6", "zlib1g", "libexpat1", "libffi8", "libssl3", "libbz2-1.0",
        "liblzma5", "libsqlite3-0", "libuuid1", "libncursesw6", "libtinfo6", "libreadline8",
        "libdb5.3", "libgdbm6", "libnsl2", "libtirpc3", "libcrypt1"]
WHEELS = ["ai-edge-litert==2.3.0", "numpy==2.4.6"]
PLATFORMS = ["manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_27_aarch64",
             "manylinux_2_28_aarch64"]
CPUINFO = """processor\t: {i}
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm \
lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
CPU revision\t: 1

"""
# Runs inside the aarch64 Python: same feeding as on x86, writes raw outputs.
GUEST = r"""
import json, platform, sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter
spec = json.loads(sys.argv[1])
x = np.load(spec["inputs"])
out = {"machine": platform.machine()}
for key, path in spec["models"].items():
    it = Interpreter(model_path=path, num_threads=1)
    it.allocate_tensors()
    d, o = it.get_input_details()[0], it.get_output_details()[0]
    res = []
    for i in range(len(x[key])):
        it.set_tensor(d["index"], x[key][i:i + 1])
        it.invoke()
        res.append(it.get_tensor(o["index"]).copy())
    np.save(spec["outputs"] + "." + key + ".npy", np.concatenate(res))
    out[key] = {"xnnpack": any(op["op_name"] == "DELEGATE" for op in it._get_ops_details())}
print(json.dumps(out))
"""


def skip(why: str) -> None:
    print(f"SKIP: {why}")
    sys.exit(0)


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)


def setup(cache: Path) -> tuple[str, Path, Path]:
    """(qemu binary, sysroot, aarch64 site-packages), building what is missing."""
    qemu = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
    if qemu is None:
        skip("qemu-aarch64(-static) not found: apt-get install qemu-user-static")
    sysroot, site = cache / "sysroot", cache / "site"
    python = sysroot / "usr" / "bin" / "python3.11"
    if not python.is_file():
        if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
            skip("no apt-get/dpkg-deb to fetch Debian's arm64 python3.11")
        if "arm64" not in run(["dpkg", "--print-foreign-architectures"]).stdout.split():
            skip("arm64 is not a dpkg architecture here: run `dpkg --add-architecture arm64 && "
                 "apt-get update` (root) once")
        debs = cache / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        got = run(["apt-get", "download", *[f"{d}:arm64" for d in DEBS], "media-types"],
                  cwd=debs)
        if got.returncode != 0:
            skip(f"apt-get download of the arm64 python failed: {got.stderr.strip()[-300:]}")
        for deb in sorted(debs.glob("*.deb")):
            run(["dpkg-deb", "-x", str(deb), str(sysroot)])
    (sysroot / "proc").mkdir(exist_ok=True)
    (sysroot / "proc" / "cpuinfo").write_text("".join(CPUINFO.format(i=i) for i in range(2)))
    if not (site / "ai_edge_litert").is_dir():
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--target", str(site),
               "--python-version", "3.11", "--implementation", "cp", "--only-binary=:all:",
               *[a for p in PLATFORMS for a in ("--platform", p)], *WHEELS]
        got = run(cmd)
        if got.returncode != 0 or not (site / "ai_edge_litert").is_dir():
            skip(f"cannot fetch the aarch64 wheels ({' '.join(WHEELS)}): "
                 f"{got.stderr.strip()[-300:]}")
    return qemu, sysroot, site


def build_models(tmp: Path, epochs: int) -> tuple[dict[str, Path], np.ndarray, np.ndarray]:
    """The demo student as FP32 and INT8 .tflite, plus the digits test split."""
    import torch

    from edgecompress.data import load_dataset
    from edgecompress.export.tflite import export_tflite, inspect_tflite
    from edgecompress.models.tiny import build_builtin
    from edgecompress.quant.tflite import TFLitePreset

    bundle = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    model = build_builtin("mobilenet", num_classes=10, in_channels=1, width=0.5, depth=1)
    x, y = torch.from_numpy(bundle.train.x), torch.from_numpy(bundle.train.y)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for i in range(0, len(x), 64):
            loss = torch.nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    fp32 = export_tflite(model, x[:1], tmp / "fp32.tflite")
    preset = TFLitePreset()
    prepared = preset.prepare(model, x[:2], qat=False)
    with torch.no_grad():
        for i in range(0, 256, 64):
            prepared(x[i:i + 64])
    int8 = preset.export(preset.convert(prepared), x[:2], tmp / "int8.tflite")
    if not inspect_tflite(int8).fully_integer:
        raise SystemExit("int8 model is not fully integer")
    return {"fp32": fp32, "int8": int8}, bundle.test.x, bundle.test.y


def host_outputs(models: dict[str, Path], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    out = {}
    for key, path in models.items():
        it = Interpreter(model_path=str(path), num_threads=1)
        it.allocate_tensors()
        d, o = it.get_input_details()[0], it.get_output_details()[0]
        res = []
        for i in range(len(inputs[key])):
            it.set_tensor(d["index"], inputs[key][i:i + 1])
            it.invoke()
            res.append(it.get_tensor(o["index"]).copy())
        out[key] = np.concatenate(res)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path,
                        default=Path.home() / ".cache" / "edgecompress" / "qemu-aarch64")
    parser.add_argument("--samples", type=int, default=0, help="test samples (0: all)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cpu", default="neoverse-n1", help="QEMU_CPU model to emulate")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "tflite_qemu_check.json")
    args = parser.parse_args()
    qemu, sysroot, site = setup(args.cache)
    from ai_edge_litert.interpreter import Interpreter

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        models, x, _ = build_models(tmp, args.epochs)
        x = x[:args.samples] if args.samples else x
        inputs = {}
        for key, path in models.items():
            d = Interpreter(model_path=str(path)).get_input_details()[0]
            if np.issubdtype(d["dtype"], np.integer):
                scale, zero = d["quantization"]
                inputs[key] = np.clip(np.round(x / scale) + zero, -128, 127).astype(d["dtype"])
            else:
                inputs[key] = x.astype(np.float32)
        np.savez(tmp / "inputs.npz", **inputs)
        host = host_outputs(models, inputs)
        spec = {"inputs": str(tmp / "inputs.npz"), "outputs": str(tmp / "guest"),
                "models": {k: str(p) for k, p in models.items()}}
        env = {**os.environ, "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1",
               "QEMU_CPU": args.cpu}
        env.pop("PYTHONHOME", None)
        proc = run([qemu, "-L", str(sysroot), str(sysroot / "usr/bin/python3.11"), "-c", GUEST,
                    json.dumps(spec)], env=env, timeout=1800)
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-2000:])
            raise SystemExit(f"aarch64 run failed (exit {proc.returncode})")
        guest_info = json.loads(proc.stdout.strip().splitlines()[-1])
        guest = {k: np.load(f"{spec['outputs']}.{k}.npy") for k in models}
    result = {"machine_guest": guest_info["machine"], "qemu_cpu": args.cpu,
              "samples": int(len(x)), "models": {}}
    ok = guest_info["machine"] == "aarch64"
    for key in models:
        a, b = host[key], guest[key]
        diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
        top1 = float(np.mean(a.argmax(1) == b.argmax(1)))
        exact = bool(np.array_equal(a, b))
        result["models"][key] = {"dtype": str(a.dtype), "bitwise_equal": exact,
                                 "max_abs_diff": diff, "top1_agreement": top1,
                                 "guest_xnnpack": guest_info[key]["xnnpack"]}
        ok &= exact if key == "int8" else (top1 == 1.0 and diff < 1e-4)
        print(f"{key:5s} ({a.dtype}): bitwise equal {exact}, max |diff| {diff:.3g}, top-1 "
              f"agreement {top1:.4f}, aarch64 ({args.cpu}) XNNPACK {guest_info[key]['xnnpack']}")
    result["passed"] = bool(ok)
    from edgecompress.io import atomic_write_json

    atomic_write_json(args.out, result)
    print(("PASS" if ok else "FAIL") + f": x86 vs aarch64 (qemu) on {len(x)} digits samples; "
          f"wrote {args.out}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
