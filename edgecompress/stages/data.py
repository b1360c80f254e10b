"""data stage: load and split the dataset, record what it is (and, for families that calibrate,
save the calibration subset). One stage for every model family: what is loaded and recorded is
the family's (:meth:`~edgecompress.families.ModelFamily.record_data`)."""

from __future__ import annotations

from typing import Any

from edgecompress.stages.base import Context, Stage, StageResult


class DataStage(Stage):
    """Loads the dataset (later stages reload it the same seeded way) and records it."""

    name = "data"

    def config(self, ctx: Context) -> dict[str, Any]:
        return {"data": ctx.family.recipe_to_dict(ctx.recipe)["data"], "seed": ctx.recipe.seed}

    def extra_fingerprints(self, ctx: Context) -> dict[str, str]:
        # Content hash of the data: a changed data file reruns everything downstream.
        return {"dataset": ctx.family.data_fingerprint(ctx)}

    def run(self, ctx: Context) -> StageResult:
        outputs, metrics = ctx.family.record_data(ctx, ctx.stage_dir(self.name))
        return StageResult(outputs=outputs, metrics=metrics)
