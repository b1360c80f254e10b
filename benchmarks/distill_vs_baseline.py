"""Distillation vs the hard-label baseline over several student seeds, same teacher, same budget.

One demo run compares one distilled student with one baseline on 360 test images, where one image
is 0.28 pp; this script repeats both trainings over several seeds (student initialisation and batch
order) against the teacher of a finished run, so the gain can be told apart from noise.

    python benchmarks/distill_vs_baseline.py --run runs/demo --seeds 5 --json out.json

Prints a table and writes JSON. Not a test: it takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, train the student pairs, print and save the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"),
                        help="A finished run directory (its recipe.json and teacher are used).")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=Path("distill_vs_baseline.json"))
    args = parser.parse_args(argv)

    from edgecompress.distributed import init_distributed
    from edgecompress.recipe import parse_recipe
    from edgecompress.stages.base import Context
    from edgecompress.stages.common import build_student, load_teacher
    from edgecompress.stages.distill import ImageDistillSteps
    from edgecompress.training import accuracy, seed_everything

    torch.set_num_threads(args.threads)
    recipe = parse_recipe(json.loads((args.run / "recipe.json").read_text()))
    dist_info = init_distributed("cpu")
    ctx = Context(recipe, args.run, dist_info)
    bundle = ctx.bundle
    teacher = load_teacher(ctx)
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher_acc = accuracy(teacher, bundle.test.x, bundle.test.y, dist_info.device)
    cfg = recipe.stages.distill
    rows = []
    for seed in range(args.seeds):
        row = {"seed": seed}
        for role, alpha in (("distilled", cfg.alpha), ("baseline", 0.0)):
            seeded = recipe.model_copy(deep=True)
            seeded.seed = seed
            seeded_ctx = Context(seeded, args.run, dist_info)
            seeded_ctx._bundle = bundle  # same split as the run; only init and order change
            seed_everything(seed)
            student = build_student(seeded_ctx)
            ImageDistillSteps(seeded_ctx).train_one(teacher, student, alpha, [], role)
            row[role] = accuracy(student, bundle.test.x, bundle.test.y, dist_info.device)
        row["gain_pp"] = 100 * (row["distilled"] - row["baseline"])
        rows.append(row)
        print(f"seed {seed}: distilled {row['distilled']:.4f}  baseline {row['baseline']:.4f}  "
              f"gain {row['gain_pp']:+.2f} pp", flush=True)
    gains = [r["gain_pp"] for r in rows]
    summary = {
        "run": str(args.run), "teacher_accuracy": teacher_acc, "test_samples": len(bundle.test.y),
        "distill": cfg.model_dump(mode="json"), "student": recipe.student.model_dump(mode="json"),
        "rows": rows, "mean_gain_pp": statistics.mean(gains),
        "stdev_gain_pp": statistics.stdev(gains) if len(gains) > 1 else 0.0,
        "wins": sum(g > 0 for g in gains), "ties": sum(g == 0 for g in gains),
    }
    print("\n| seed | distilled | baseline | gain (pp) |\n|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['seed']} | {r['distilled']:.4f} | {r['baseline']:.4f} | {r['gain_pp']:+.2f} |")
    print(f"\nteacher {teacher_acc:.4f}; mean gain {summary['mean_gain_pp']:+.2f} pp "
          f"(stdev {summary['stdev_gain_pp']:.2f}); distilled wins {summary['wins']}/{len(rows)}")
    args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
