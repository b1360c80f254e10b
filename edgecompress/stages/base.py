"""The contract every stage shares: a name, the recipe part it depends on, its input artifacts, and
``run(context) -> StageResult`` listing the artifacts it wrote.

The pipeline hashes ``config`` + input files to decide whether a stage can be skipped on a rerun.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from edgecompress.distributed import DistInfo
from edgecompress.recipe import Recipe

logger = logging.getLogger(__name__)


@dataclass
class StageResult:
    """Artifacts a stage wrote (name -> path inside the run directory) and its metrics."""

    outputs: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


class Context:
    """What a stage can see: the recipe, its model family, the run directory, the process
    group, the dataset (families subclass it to add what their stages share)."""

    def __init__(self, recipe: Recipe, run_dir: Path, dist_info: DistInfo) -> None:
        from edgecompress.families import family_for

        self.recipe = recipe
        self.family = family_for(recipe)
        self.run_dir = run_dir
        self.dist = dist_info
        self._bundle = None

    def stage_dir(self, name: str) -> Path:
        """The directory of stage ``name`` (created on demand)."""
        path = self.run_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def bundle(self):  # -> DatasetBundle (import kept lazy: the data extra is optional)
        """The dataset, loaded once per process from the recipe's data section."""
        if self._bundle is None:
            from edgecompress.data import load_dataset

            cfg = self.recipe.data
            self._bundle = load_dataset(
                cfg.source, cfg.path, val_fraction=cfg.val_fraction,
                test_fraction=cfg.test_fraction, seed=self.recipe.seed,
                image_size=cfg.image_size, grayscale=cfg.grayscale, npz_keys=cfg.npz_keys,
                limit=cfg.limit, train_limit=cfg.train_limit, eval_limit=cfg.eval_limit,
                name=cfg.name, stream=cfg.stream, workers=cfg.workers, mean=cfg.mean,
                std=cfg.std, stats_samples=cfg.stats_samples,
                transforms=photo_transforms(cfg.transforms), image_column=cfg.image_column,
                label_column=cfg.label_column)
        return self._bundle


def photo_transforms(cfg: Any):  # -> PhotoTransforms | None
    """The data layer's photo transforms from the recipe's ``data.transforms`` (or None)."""
    if cfg is None:
        return None
    from edgecompress.data.stream import PhotoTransforms

    return PhotoTransforms(crop_size=cfg.crop_size, resize_size=cfg.resize_size,
                           scale=tuple(cfg.scale), hflip=cfg.hflip,
                           color_jitter=cfg.color_jitter, randaugment=cfg.randaugment)


class Stage(ABC):
    """One step of the pipeline."""

    name: ClassVar[str]
    #: Whether every torchrun rank runs this stage (training stages); others run on rank 0 only.
    distributed: ClassVar[bool] = False

    @abstractmethod
    def config(self, ctx: Context) -> dict[str, Any]:
        """The part of the recipe this stage's outputs depend on (hashed for resume)."""

    def inputs(self, ctx: Context) -> dict[str, Path]:
        """Artifacts of earlier stages (and user files) this stage reads (hashed for resume)."""
        return {}

    def extra_fingerprints(self, ctx: Context) -> dict[str, str]:
        """Other content hashes the outputs depend on (e.g. the dataset fingerprint)."""
        return {}

    @abstractmethod
    def run(self, ctx: Context) -> StageResult:
        """Do the work; write outputs atomically (rank 0 only) and return them."""


class StageSteps(ABC):
    """What a model family does in one shared stage (one instance per call, holding the
    context): the stage asks it what its outputs depend on and runs it."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The recipe part the stage's outputs depend on (hashed for resume)."""

    def inputs(self) -> dict[str, Path]:
        """Earlier artifacts and user files the stage reads (hashed for resume)."""
        return {}

    def fingerprints(self) -> dict[str, str]:
        """Other content hashes the outputs depend on (the dataset, a model directory)."""
        return {}


class FamilyStage(Stage):
    """A shared stage whose family-specific work is the family's :class:`StageSteps`."""

    @abstractmethod
    def steps(self, ctx: Context) -> StageSteps:
        """This run's family steps for the stage."""

    def config(self, ctx: Context) -> dict[str, Any]:
        return self.steps(ctx).config()

    def inputs(self, ctx: Context) -> dict[str, Path]:
        return self.steps(ctx).inputs()

    def extra_fingerprints(self, ctx: Context) -> dict[str, str]:
        return self.steps(ctx).fingerprints()


def read_stage_manifest(run_dir: Path, name: str) -> dict[str, Any]:
    """The manifest a finished stage wrote (empty dict if it has none)."""
    path = Path(run_dir) / name / "stage.json"
    return json.loads(path.read_text()) if path.is_file() else {}
