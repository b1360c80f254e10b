"""Structured pruning of the built-in students at a MACs budget, per importance criterion.

For each student family (ResNet-style and MobileNet-style, width 0.5, depth 1) this distils the
student from the teacher of a finished run (in a copy of the run directory, so the original is
untouched), then prunes it to ``--macs`` of its MACs with each importance criterion, recovering
by distillation, and records params/MACs before and after and the test accuracy of the distilled,
the pruned (before recovery) and the recovered student.

    python benchmarks/prune_tiny.py --run runs/demo --macs 0.5 --json prune_tiny.json

Prints a table and writes JSON. Not a test: it takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, distil and prune each family/criterion, print and save the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"),
                        help="A finished run directory (its recipe and teacher are used).")
    parser.add_argument("--macs", type=float, default=0.5, help="target_macs_ratio")
    parser.add_argument("--recovery-epochs", type=int, default=None,
                        help="Default: the recipe default of stages.prune.recovery_epochs.")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--families", nargs="+", default=["resnet", "mobilenet"])
    parser.add_argument("--importance", nargs="+", default=["l1", "l2", "taylor", "fpgm"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=Path("prune_tiny.json"))
    args = parser.parse_args(argv)

    from edgecompress.pipeline import Pipeline, read_stage_manifest
    from edgecompress.recipe import parse_recipe
    from edgecompress.stages.data import DataStage
    from edgecompress.stages.student import DistillStage, PruneStage
    from edgecompress.stages.teacher import TeacherStage

    torch.set_num_threads(args.threads)
    raw = json.loads((args.run / "recipe.json").read_text())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "run"
        shutil.copytree(args.run, work)
        for family in args.families:
            for importance in args.importance:
                raw["student"].update({"kind": "builtin", "family": family, "width": 0.5,
                                       "depth": 1})
                raw["stages"]["distill"]["baseline"] = False
                raw["stages"]["prune"] = {"enabled": True, "target_macs_ratio": args.macs,
                                          "importance": importance, "steps": args.steps}
                if args.recovery_epochs is not None:
                    raw["stages"]["prune"]["recovery_epochs"] = args.recovery_epochs
                recipe = parse_recipe(raw)
                recovery = recipe.stages.prune.recovery_epochs
                stages = [DataStage(), TeacherStage("finetune"), DistillStage(), PruneStage()]
                Pipeline(recipe, work, stages=stages).run()
                m = read_stage_manifest(work, "prune")["metrics"]
                row = {"family": family, "importance": importance,
                       **{k: m[k] for k in ("params_before", "params_after", "macs_before",
                                            "macs_after", "macs_ratio", "params_ratio",
                                            "within_tolerance", "test_accuracy_distilled",
                                            "test_accuracy")},
                       "test_accuracy_pruned": m["steps"][-1]["test_accuracy_pruned"],
                       "seconds": read_stage_manifest(work, "prune")["seconds"]}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\nMACs budget {args.macs}, recovery {recovery} epochs x {args.steps} "
          "step(s); test accuracy on the run's test split\n")
    print("| student | importance | params | MACs | MACs ratio | distilled | pruned | "
          "recovered |\n|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['family']} | {r['importance']} | {r['params_before']:,} -> "
              f"{r['params_after']:,} | {r['macs_before']:,} -> {r['macs_after']:,} | "
              f"{r['macs_ratio']:.3f} | {r['test_accuracy_distilled']:.4f} | "
              f"{r['test_accuracy_pruned']:.4f} | {r['test_accuracy']:.4f} |")
    args.json.write_text(json.dumps({"run": str(args.run), "macs": args.macs,
                                     "recovery_epochs": recovery,
                                     "steps": args.steps, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
