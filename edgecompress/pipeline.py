"""Orders and runs the stages in a run directory, with manifests and resume.

Layout of a run directory::

    run.json                 who owns the directory (identity hash), versions, stage status
    recipe.json              the resolved recipe
    <stage>/stage.json       config hash, input hashes, output hashes, versions, seconds, metrics
    <stage>/...              that stage's artifacts
    report.json, report.md   written by the report stage

A stage is skipped when its ``stage.json`` exists and its config hash, input hashes and output
hashes all still match. ``stage.json`` is written last (atomically), so a run killed in the
middle of a stage leaves no manifest for it and the stage reruns; its half-written temp files
are never trusted.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from edgecompress.distributed import (
    barrier,
    broadcast_object,
    init_distributed,
    shutdown_distributed,
)
from edgecompress.environment import TRACKED_PACKAGES, library_versions  # noqa: F401
from edgecompress.errors import ConfigError, RunDirError
from edgecompress.io import atomic_write_json, sha256_file, sha256_json
from edgecompress.recipe import Recipe, recipe_to_dict
from edgecompress.runlock import remove_stale_temp_files, run_dir_lock
from edgecompress.stages.base import Context, Stage, read_stage_manifest  # noqa: F401

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1
def default_stages() -> list[Stage]:
    """The stages in pipeline order (imported here so ``import edgecompress`` stays light)."""
    from edgecompress.stages.bench import BenchStage
    from edgecompress.stages.data import DataStage
    from edgecompress.stages.distill import DistillStage
    from edgecompress.stages.export import ExportStage
    from edgecompress.stages.finetune import FinetuneStage
    from edgecompress.stages.prune import PruneStage
    from edgecompress.stages.qat import QatStage
    from edgecompress.stages.report import ReportStage

    return [DataStage(), FinetuneStage(), DistillStage(), PruneStage(), QatStage(),
            ExportStage(), BenchStage(), ReportStage()]


def run_identity(recipe: Recipe) -> str:
    """What makes a run directory 'the same run': its data, teacher and seed.

    Other recipe changes (epochs, targets, ...) rerun only the stages they affect.
    """
    raw = recipe_to_dict(recipe)
    return sha256_json({"data": raw["data"], "teacher": raw["teacher"], "seed": raw["seed"]})


def prepare_run_dir(run_dir: Path, recipe: Recipe, *, overwrite: bool) -> None:
    """Create or adopt ``run_dir``; refuse another run's (or a foreign) non-empty directory.

    Call it holding :func:`edgecompress.runlock.run_dir_lock`: it also deletes the temp files
    of writes a killed run left behind.

    Raises:
        RunDirError: the directory holds something else and ``overwrite`` was not given.
    """
    identity = run_identity(recipe)
    owner = run_dir / "run.json"
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--out {run_dir}: exists and is not a directory")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not owner.is_file():
            raise RunDirError(f"--out {run_dir}: directory is not empty and is not an edgecompress "
                              "run directory (no run.json); choose an empty or new directory")
        import json

        try:
            existing = json.loads(owner.read_text())
        except (OSError, ValueError) as err:
            raise RunDirError(f"{owner}: unreadable ({err}); pass --overwrite to start afresh") \
                from None
        if not isinstance(existing, dict) or existing.get("tool") != "edgecompress":
            # Not written by us: never adopted, and never deleted by --overwrite.
            what = (f"a JSON {type(existing).__name__}" if not isinstance(existing, dict)
                    else "no \"tool\": \"edgecompress\"")
            raise RunDirError(f"{owner}: not an edgecompress run.json ({what}); choose another "
                              "directory (--overwrite never deletes a directory edgecompress "
                              "did not create)")
        if existing.get("identity") != identity:
            if not overwrite:
                raise RunDirError(
                    f"--out {run_dir}: holds a different run (recipe "
                    f"'{existing.get('recipe_name')}', other data/teacher/seed); pass --overwrite "
                    "to replace it, or choose another directory")
            logger.warning("replacing the different run in %s (--overwrite)", run_dir)
            clear_run_dir(run_dir)
        elif overwrite:
            logger.info("--overwrite: starting %s afresh", run_dir)
            clear_run_dir(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not owner.is_file():
            atomic_write_json(owner, {"tool": "edgecompress", "manifest_version": MANIFEST_VERSION,
                                      "identity": identity, "recipe_name": recipe.name,
                                      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                      "versions": library_versions()})
    except OSError as err:
        raise RunDirError(f"--out {run_dir}: cannot be written: {err.strerror or err}") from None
    remove_stale_temp_files(run_dir)  # the caller holds the lock: no write of ours is in flight


#: Top-level files every run (image or text) writes besides its stage directories.
RUN_FILES = ("run.json", "recipe.json", "report.json", "report.md", "report.html", "junit.xml")


def clear_run_dir(run_dir: Path) -> list[str]:
    """Delete what edgecompress created in ``run_dir`` (``--overwrite``), nothing else.

    Created by the tool: the files of :data:`RUN_FILES`, every folder holding a ``stage.json``
    (a stage's directory), and every top-level folder a stage manifest lists outputs in (e.g.
    ``engines/``). Anything else (a user's notes, data put there by hand) is kept and named in a
    warning; ``run.json`` goes last, so an interrupted clear still leaves the directory marked
    as a run. Returns the names kept.
    """
    import json

    owned = set(RUN_FILES)
    for child in run_dir.iterdir():
        manifest = child / "stage.json"
        if child.is_dir() and manifest.is_file():
            owned.add(child.name)
            try:
                outputs = json.loads(manifest.read_text()).get("outputs") or {}
            except (OSError, ValueError, AttributeError):
                outputs = {}
            for value in outputs.values() if isinstance(outputs, dict) else ():
                if isinstance(value, list) and value and isinstance(value[0], str):
                    owned.add(Path(value[0]).parts[0])
    kept = []
    for child in sorted(run_dir.iterdir(), key=lambda p: p.name == "run.json"):
        if child.name not in owned:
            kept.append(child.name)
        elif child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    if kept:
        logger.warning("--overwrite kept what edgecompress did not create in %s: %s", run_dir,
                       ", ".join(kept))
    return kept


def preflight(ctx: Context) -> None:
    """Check every input before anything is written: data loads, models build and fit the data's
    shape and classes, the prune section fits the student, targets name known backends with
    supported settings.

    Bad input therefore fails fast (exit 2) and leaves no run directory behind.
    """
    from edgecompress.backends import get_backend
    from edgecompress.stages.common import build_student, build_teacher_arch, check_model_sources
    from edgecompress.stages.losses import FeatureTaps

    check_model_sources(ctx.recipe)  # packages and names, before any data is read
    bundle = ctx.bundle
    logger.info("data: %s, %d classes, input %s, train/val/test %d/%d/%d", bundle.name,
                bundle.num_classes, bundle.input_shape, len(bundle.train.y), len(bundle.val.y),
                len(bundle.test.y))
    teacher, _ = build_teacher_arch(ctx)
    student = build_student(ctx)
    features = ctx.recipe.stages.distill.features
    if features == "auto":  # pairs found from shapes now, so "no pair" fails before any run
        from edgecompress.stages.feature_match import preflight_auto_features

        features = preflight_auto_features(ctx.recipe.stages.distill, teacher, student,
                                           bundle.train.x[:2])
    for feature in features:  # layer names exist (hooks removed again)
        FeatureTaps(teacher, [feature.teacher], "teacher").remove()
        FeatureTaps(student, [feature.student], "student").remove()
    from edgecompress.stages.prune import check_prune

    pruned = check_prune(ctx, student)  # layers exist, budget reachable, pruned copy rebuilds
    for target in ctx.recipe.targets:
        get_backend(target.backend).validate(target.precision, target.threads)
    from edgecompress.stages.qat import check_qat

    check_qat(ctx.recipe)  # int8 targets: qat enabled, each preset fits its backend
    from edgecompress.stages.export import check_tflite_convertible

    # The converter sees the pruned shapes (ConvNeXt converts whole but not pruned).
    check_tflite_convertible(ctx, {"teacher": teacher, "student": pruned or student})


class Pipeline:
    """Runs stages in order inside one run directory, skipping those already up to date."""

    def __init__(self, recipe: Recipe, run_dir: str | Path, stages: list[Stage] | None = None):
        self.recipe = recipe
        self.run_dir = Path(run_dir).resolve()
        self.stages = stages if stages is not None else default_stages()
        self.names = [s.name for s in self.stages]

    def _manifest_state(self, stage: Stage, ctx: Context) -> dict[str, Any]:
        config_hash = sha256_json(stage.config(ctx))
        inputs = {}
        for key, path in stage.inputs(ctx).items():
            if not Path(path).is_file():
                inputs[key] = "missing"
            else:
                inputs[key] = sha256_file(path)
        inputs.update(stage.extra_fingerprints(ctx))
        return {"config_hash": config_hash, "inputs": inputs}

    def _up_to_date(self, stage: Stage, ctx: Context, state: dict[str, Any]) -> bool:
        path = self.run_dir / stage.name / "stage.json"
        if not path.is_file():
            return False
        import json

        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        if previous.get("config_hash") != state["config_hash"]:
            return False
        if previous.get("inputs") != state["inputs"]:
            return False
        for rel, digest in previous.get("outputs", {}).values():
            out = self.run_dir / rel
            if not out.is_file() or sha256_file(out) != digest:
                logger.warning("%s: output %s changed or is missing; rerunning", stage.name, rel)
                return False
        return True

    def run(self, *, force: str | None = None, overwrite: bool = False) -> dict[str, Any]:
        """Run every stage; returns {stage name: 'ran' | 'skipped'}.

        Args:
            force: rerun this stage and every later one even if up to date.
            overwrite: replace a different run's directory.
        """
        if force is not None and force not in self.names:
            raise ConfigError(f"--force {force}: unknown stage; stages are "
                              f"{', '.join(self.names)}")
        dist_info = init_distributed(self.recipe.device)
        try:
            ctx = Context(self.recipe, self.run_dir, dist_info)
            preflight(ctx)
            # One process per run directory (rank 0 holds the lock for all ranks).
            with run_dir_lock(self.run_dir) if dist_info.is_main else contextlib.nullcontext():
                if dist_info.is_main:
                    prepare_run_dir(self.run_dir, self.recipe, overwrite=overwrite)
                    atomic_write_json(self.run_dir / "recipe.json", recipe_to_dict(self.recipe))
                barrier()
                return self._run_stages(ctx, force)
        finally:
            shutdown_distributed()

    def _run_stages(self, ctx: Context, force: str | None) -> dict[str, Any]:
        status: dict[str, Any] = {}
        forcing = False
        last_distributed = max((i for i, s in enumerate(self.stages) if s.distributed), default=-1)
        for index, stage in enumerate(self.stages):
            if not ctx.dist.is_main and index > last_distributed:
                break  # only rank 0 exports, benchmarks and reports
            forcing = forcing or stage.name == force
            # Ranks > 0 leave after the last training stage: no collectives with them after it.
            collective = index <= last_distributed
            decision = None
            if ctx.dist.is_main:
                state = self._manifest_state(stage, ctx)
                fresh = forcing or not self._up_to_date(stage, ctx, state)
                decision = (fresh, state)
            fresh, state = broadcast_object(decision) if collective else decision
            if not fresh:
                logger.info("[%s] up to date, skipped", stage.name)
                status[stage.name] = "skipped"
                continue
            if not (stage.distributed or ctx.dist.is_main):
                barrier()  # wait for rank 0 to finish this stage (matches its barrier below)
                status[stage.name] = "ran"
                continue
            logger.info("[%s] running", stage.name)
            start = time.perf_counter()
            result = stage.run(ctx)
            seconds = time.perf_counter() - start
            if ctx.dist.is_main:
                self._write_stage_manifest(stage, state, result, seconds)
            if collective:
                barrier()
            status[stage.name] = "ran"
            logger.info("[%s] done in %.1f s", stage.name, seconds)
        return status

    def _write_stage_manifest(self, stage: Stage, state: dict[str, Any], result,
                              seconds: float) -> None:
        outputs = {}
        for key, path in result.outputs.items():
            path = Path(path)
            rel = path.relative_to(self.run_dir) if path.is_absolute() else path
            outputs[key] = [str(rel), sha256_file(self.run_dir / rel)]
        manifest = {"stage": stage.name, **state, "outputs": outputs,
                    "versions": library_versions(), "seconds": round(seconds, 3),
                    "metrics": result.metrics,
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_json(self.run_dir / stage.name / "stage.json", manifest)
