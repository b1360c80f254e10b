"""data stage: load and split the dataset, record what it is, save the calibration subset."""

from __future__ import annotations

from typing import Any

from edgecompress.io import atomic_write_json
from edgecompress.recipe import recipe_to_dict
from edgecompress.stages.base import Context, Stage, StageResult


class DataStage(Stage):
    """Loads the dataset (later stages reload it the same seeded way) and saves calibration."""

    name = "data"

    def config(self, ctx: Context) -> dict[str, Any]:
        return {"data": recipe_to_dict(ctx.recipe)["data"], "seed": ctx.recipe.seed}

    def extra_fingerprints(self, ctx: Context) -> dict[str, str]:
        # Content hash of the split arrays: a changed data file reruns everything downstream.
        return {"dataset": ctx.bundle.fingerprint()}

    def run(self, ctx: Context) -> StageResult:
        from edgecompress.data import sample_calibration, save_calibration

        bundle = ctx.bundle
        out = ctx.stage_dir(self.name)
        x_cal, y_cal = sample_calibration(bundle, ctx.recipe.data.calibration_samples,
                                          seed=ctx.recipe.seed)
        calib = save_calibration(out, x_cal, y_cal, bundle, seed=ctx.recipe.seed)
        summary = {
            "name": bundle.name, "fingerprint": bundle.fingerprint(),
            "num_classes": bundle.num_classes, "input_shape": list(bundle.input_shape),
            "class_names": bundle.class_names, "mean": bundle.mean, "std": bundle.std,
            "samples": {"train": len(bundle.train.y), "val": len(bundle.val.y),
                        "test": len(bundle.test.y), "calibration": int(len(y_cal))},
        }
        atomic_write_json(out / "dataset.json", summary)
        return StageResult(outputs={"dataset": out / "dataset.json", "calibration": calib,
                                    "calibration_meta": out / "calibration.json"},
                           metrics=summary["samples"])
