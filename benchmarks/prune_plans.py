"""Which channel plan (greedy, uniform, global) keeps the most accuracy at the same MACs.

For each torchvision architecture (num_classes=10) this trains the unpruned model once on a
Fashion-MNIST subset (28x28 upsampled to 32x32, the grey channel repeated to 3), then for each
``stages.prune.plan`` prunes a copy to ``--macs`` of its MACs with the project's
:class:`~edgecompress.prune.pruner.StructuredPruner` (same importance, same ``round_to``) and
recovers it for the same epochs with the same seed, distilling from the unpruned model as the
prune stage does. Records test accuracy (pruned, recovered), MACs and params ratios and how many
channel groups changed.

    python benchmarks/prune_plans.py --json benchmarks/results/prune_plans.json

Prints a markdown table and writes JSON. Not a test: it takes several minutes.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

DATA = Path("/usr/share/datasets/fashion-mnist")
PLANS = ("greedy", "uniform", "global")


def _idx(path: Path) -> np.ndarray:
    """An IDX file (gzip) as a numpy array."""
    raw = gzip.open(path, "rb").read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _images(x: np.ndarray) -> np.ndarray:
    """uint8 Nx28x28 -> float32 Nx3x32x32, normalised (bilinear upsampling, grey repeated)."""
    t = torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)
    t = torch.nn.functional.interpolate(t, size=(32, 32), mode="bilinear", align_corners=False)
    t = (t - 0.286) / 0.353
    return t.repeat(1, 3, 1, 1).contiguous().numpy()


def load_data(root: Path, n_train: int, n_val: int, n_test: int, seed: int) -> dict:
    """Seeded subsets: train and val from the 60k training set, test from the 10k test set."""
    rng = np.random.default_rng(seed)
    x, y = _idx(root / "train-images-idx3-ubyte.gz"), _idx(root / "train-labels-idx1-ubyte.gz")
    pick = rng.permutation(len(x))[: n_train + n_val]
    xt, yt = _idx(root / "t10k-images-idx3-ubyte.gz"), _idx(root / "t10k-labels-idx1-ubyte.gz")
    test = rng.permutation(len(xt))[:n_test]
    tr, va = pick[:n_train], pick[n_train:]
    return {"train": (_images(x[tr]), y[tr].astype(np.int64)),
            "val": (_images(x[va]), y[va].astype(np.int64)),
            "test": (_images(xt[test]), yt[test].astype(np.int64))}


def _environment() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), [])
    import torch_pruning

    from edgecompress.models.zoo import import_torchvision

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()
    return {"cpu": cpu, "avx512f": "avx512f" in flags, "avx2": "avx2" in flags,
            "vnni": any("vnni" in f for f in flags), "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": import_torchvision().__version__,
            "torch_pruning": torch_pruning.__version__, "threads": torch.get_num_threads(),
            "commit": commit}


def main(argv: list[str] | None = None) -> int:
    """Train each architecture once, prune and recover it with every plan, print and save."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--plans", nargs="+", default=list(PLANS), choices=PLANS)
    parser.add_argument("--macs", type=float, default=0.5, help="target_macs_ratio")
    parser.add_argument("--importance", default="l2")
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--train", type=int, default=1000, help="training images")
    parser.add_argument("--val", type=int, default=300, help="validation images (best epoch)")
    parser.add_argument("--test", type=int, default=1000, help="test images")
    parser.add_argument("--epochs", type=int, default=5, help="training of the unpruned model")
    parser.add_argument("--recovery-epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/prune_plans.json"))
    args = parser.parse_args(argv)

    from edgecompress.distributed import DistInfo
    from edgecompress.models import count_macs, count_params
    from edgecompress.models.zoo import import_torchvision
    from edgecompress.prune.importance import make_importance
    from edgecompress.prune.pruner import PruneTarget, StructuredPruner
    from edgecompress.stages.losses import distillation_loss
    from edgecompress.training import accuracy, predict_logits, seed_everything, train

    torch.set_num_threads(args.threads)
    tv = import_torchvision()
    cpu = torch.device("cpu")
    dist = DistInfo(0, 1, 0, cpu)
    data = load_data(args.data, args.train, args.val, args.test, args.seed)
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = data["train"], data["val"], data["test"]
    shape = tuple(x_tr.shape[1:])
    fit = {"x_train": x_tr, "y_train": y_tr, "x_val": x_va, "y_val": y_va, "lr": args.lr,
           "weight_decay": 1e-4, "batch_size": 64, "dist_info": dist}
    rows = []
    for arch in args.archs:
        seed_everything(args.seed)
        base = getattr(tv.models, arch)(num_classes=10)
        start = time.perf_counter()

        def ce(module, xb, yb, _idx):
            return torch.nn.functional.cross_entropy(module(xb), yb)

        result = train(base, base, ce, epochs=args.epochs, patience=args.epochs, seed=args.seed,
                       desc=f"{arch} train", **fit)
        base.load_state_dict(result.best_state)
        base.eval()
        base_acc = accuracy(base, x_te, y_te, cpu)
        teacher = torch.from_numpy(predict_logits(base, x_tr, cpu))
        print(f"{arch}: unpruned test accuracy {base_acc:.4f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
        macs0, params0 = count_macs(base, shape), count_params(base)
        for plan in args.plans:
            start = time.perf_counter()
            model = copy.deepcopy(base)
            pruner = StructuredPruner(model, torch.from_numpy(x_tr[:1]),
                                      target=PruneTarget("target_macs_ratio", args.macs),
                                      importance=make_importance(args.importance),
                                      round_to=args.round_to, ignored_layers=[], plan=plan)
            pruner.step(1, 1)
            summary = pruner.summary()
            pruned_acc = accuracy(model, x_te, y_te, cpu)

            def kd(module, xb, yb, idx, targets=teacher):
                return distillation_loss(module(xb), targets[idx], yb, alpha=0.9,
                                         temperature=4.0)

            seed_everything(args.seed)
            train(model, model, kd, epochs=args.recovery_epochs,
                  patience=args.recovery_epochs, seed=args.seed + 1, desc=f"{arch} {plan}",
                  **fit)
            row = {"arch": arch, "plan": plan, "importance": args.importance,
                   "round_to": args.round_to, "target_macs_ratio": args.macs,
                   "macs_before": macs0, "params_before": params0,
                   "macs_ratio": summary["macs_ratio"], "params_ratio": summary["params_ratio"],
                   "within_tolerance": summary["within_tolerance"],
                   "groups_changed": summary["groups_changed"],
                   "groups": len(summary["channels"]), "channels": summary["channels"],
                   "test_accuracy_unpruned": base_acc, "test_accuracy_pruned": pruned_acc,
                   "test_accuracy_recovered": accuracy(model, x_te, y_te, cpu),
                   "seconds": round(time.perf_counter() - start, 1)}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "channels"}), flush=True)
    setup = {k: getattr(args, k) for k in ("macs", "importance", "round_to", "train", "val",
                                           "test", "epochs", "recovery_epochs", "lr", "seed")}
    out = {"setup": {**setup, "dataset": "fashion-mnist 3x32x32"}, "environment": _environment(),
           "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2))
    tmp.replace(args.json)
    print(f"\nFashion-MNIST 3x32x32 ({args.train} train / {args.test} test), MACs budget "
          f"{args.macs}, importance {args.importance}, round_to {args.round_to}, recovery "
          f"{args.recovery_epochs} epochs (KD from the unpruned model), seed {args.seed}\n")
    print("| arch | plan | unpruned | pruned | recovered | MACs ratio | params ratio | "
          "groups changed |\n|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['arch']} | {r['plan']} | {r['test_accuracy_unpruned']:.4f} | "
              f"{r['test_accuracy_pruned']:.4f} | {r['test_accuracy_recovered']:.4f} | "
              f"{r['macs_ratio']:.3f} | {r['params_ratio']:.3f} | "
              f"{r['groups_changed']}/{r['groups']} |")
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
