"""Memory and throughput of streamed image folders: 2,000 vs 20,000 JPEGs at 224x224.

For each folder size, in a fresh process: the data stage's work (list and split the folder,
photo transforms, mean/std on a sample, the calibration subset saved) and one distillation epoch
(teacher and student: small CNNs with a 4x4 patchify stem, ~10-20 M MACs at 224 px, so the
epoch measures the data path rather than the model; teacher run on every augmented batch, as the
distill stage does), both through the library's own functions. Reported per size: peak RSS of
the main process (``VmHWM``, the kernel's high-water mark) and of the largest DataLoader worker
(``getrusage(RUSAGE_CHILDREN).ru_maxrss``), their sum (an upper bound of the simultaneous
peak), seconds, and images/s of the epoch. The synthetic folders (coloured blobs on noise,
sizes jittered around 224, JPEG quality 85) are written once under ``--root``.

    python benchmarks/data_scale.py --json benchmarks/results/data_scale.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

SIZES = (2_000, 20_000)
CLASSES = 10


def _folder(root: Path, images: int) -> Path:
    from edgecompress.devtools.synthetic_images import write_image_folder

    folder = root / f"jpeg-{images}"
    done = folder / ".complete"
    if not done.exists():
        start = time.perf_counter()
        write_image_folder(folder, classes=CLASSES, per_class=images // CLASSES,
                           size=(224, 224), jitter=32, seed=images)
        done.write_text("ok")
        print(f"wrote {images} JPEGs to {folder} in {time.perf_counter() - start:.0f} s",
              flush=True)
    return folder


def _small_cnn(num_classes: int, width: int):
    """Patchify stem (4x4, stride 4) + two 3x3 convs + global pooling: a model whose compute
    at 224 px is small next to JPEG decoding, so the benchmark measures the data path."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, width, 4, stride=4), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.BatchNorm2d(4 * width),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes))


def _vm_hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return -1


def child(folder: Path, out: Path, batch_size: int, workers: int | None,
          in_memory: bool = False) -> None:
    """One measurement in this (fresh) process; writes its JSON to ``out``."""
    import torch

    from edgecompress.data import load_dataset, sample_calibration, save_calibration
    from edgecompress.data.stream import PhotoTransforms
    from edgecompress.distributed import DistInfo
    from edgecompress.recipe import DistillConfig
    from edgecompress.stages.distill import Setting, train_student

    start = time.perf_counter()
    kw = ({"image_size": (224, 224), "stream": False} if in_memory
          else {"transforms": PhotoTransforms(crop_size=224)})
    bundle = load_dataset("imagefolder", folder, seed=0, workers=workers, val_fraction=0.05,
                          test_fraction=0.05, **kw)
    x_cal, y_cal = sample_calibration(bundle, 256, seed=0)
    save_calibration(out.parent / f"calib-{len(bundle.train)}", x_cal, y_cal, bundle, seed=0)
    del x_cal
    data_s = time.perf_counter() - start
    teacher = _small_cnn(bundle.num_classes, 32).eval()
    student = _small_cnn(bundle.num_classes, 16)
    cfg = DistillConfig(epochs=1, batch_size=batch_size, baseline=False, patience=1)
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    start = time.perf_counter()
    train_student(teacher, student, bundle, cfg, Setting("kd", 4.0, 0.9), seed=0,
                  dist_info=dist, role="student")
    epoch_s = time.perf_counter() - start
    n_train, n_val = len(bundle.train), len(bundle.val)
    record = {
        "images": len(bundle.train) + len(bundle.val) + len(bundle.test),
        "train": n_train, "val": n_val, "test": len(bundle.test),
        "streamed": bundle.info["streamed"],
        "data_stage_s": round(data_s, 2), "epoch_s": round(epoch_s, 2),
        # the epoch trains on train and evaluates val (both decoded)
        "epoch_images_per_s": round((n_train + n_val) / epoch_s, 1),
        "main_peak_rss_mib": round(_vm_hwm_kib() / 1024, 1),
        "worker_peak_rss_mib": round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }
    record["peak_rss_mib_upper_bound"] = round(record["main_peak_rss_mib"]
                                               + record["worker_peak_rss_mib"], 1)
    out.write_text(json.dumps(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/edgecompress-data-scale"))
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--in-memory", action="store_true",
                        help="the comparison: decode into memory (image_size 224, stream: false, "
                             "no photo transforms)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/data_scale.json"))
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.out, args.batch_size, args.workers, args.in_memory)
        return

    from edgecompress.isa import cpu_info

    args.root.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        folder = _folder(args.root, size)
        out = args.root / f"result-{size}.json"
        cmd = [sys.executable, __file__, "--child", str(folder), "--out", str(out),
               "--batch-size", str(args.batch_size)]
        if args.workers is not None:
            cmd += ["--workers", str(args.workers)]
        if args.in_memory:
            cmd.append("--in-memory")
        subprocess.run(cmd, check=True)
        rows.append(json.loads(out.read_text()))
        print(json.dumps(rows[-1]), flush=True)
    cpu = cpu_info()
    result = {"cpu": {"model": cpu.model, "isa": cpu.isa}, "batch_size": args.batch_size,
              "crop": 224, "classes": CLASSES, "in_memory": args.in_memory, "rows": rows}
    if len(rows) >= 2:
        result["peak_rss_ratio_largest_vs_smallest"] = round(
            rows[-1]["peak_rss_mib_upper_bound"] / rows[0]["peak_rss_mib_upper_bound"], 3)
        result["main_rss_ratio_largest_vs_smallest"] = round(
            rows[-1]["main_peak_rss_mib"] / rows[0]["main_peak_rss_mib"], 3)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    how = "in memory, resized to 224x224" if args.in_memory else "streamed, photo transforms"
    print(f"\n{cpu.model} ({cpu.isa}); batch {args.batch_size}, {how}")
    print("| images | streamed | data stage s | epoch s | images/s | main peak RSS MiB | "
          "worker peak RSS MiB |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['images']:,} | {r['streamed']} | {r['data_stage_s']} | {r['epoch_s']} | "
              f"{r['epoch_images_per_s']} | {r['main_peak_rss_mib']} | "
              f"{r['worker_peak_rss_mib']} |")
    if "peak_rss_ratio_largest_vs_smallest" in result:
        print(f"peak RSS ratio {rows[-1]['images']:,} / {rows[0]['images']:,}: "
              f"{result['peak_rss_ratio_largest_vs_smallest']} (main process "
              f"{result['main_rss_ratio_largest_vs_smallest']})")


if __name__ == "__main__":
    main()
