"""The Python API: :func:`compress` runs the same pipeline as ``edgecompress run`` from live
objects (a teacher ``nn.Module``, a student, torch ``Dataset``s or arrays) in a notebook or a
script, and returns a :class:`CompressResult` instead of printing.

How live objects enter a pipeline that is built around files (so that runs resume and every
artifact is hashed):

- a live ``nn.Module`` (teacher or student) is registered in this process under a key derived
  from its class and weights, and the recipe names it as ``kind: factory`` with
  ``factory: edgecompress.api:live_model``; the stages build a deep copy of it. Same weights ->
  same key -> an interrupted run resumes. It works in this process only (not under torchrun);
- datasets are written once as ``<out>.inputs/data.npz`` (``x_train``, ``y_train``,
  ``x_test``, ``y_test``) and the recipe reads them with ``data.source: npz``;
- everything else is the recipe: a path, a dict, a :class:`~edgecompress.recipe.Recipe`, or
  keyword sections (``stages={...}``, ``targets=[...]``, ``gate={...}``) merged over it.

The CLI's ``run`` and ``demo`` are thin layers over :func:`run_recipe`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecompress.errors import ConfigError
from edgecompress.families import family_for
from edgecompress.live import live_model, merge_mapping, register_module
from edgecompress.recipe import Recipe, recipe_to_dict

__all__ = ["CompressResult", "collect_result", "compress", "live_model", "register_module",
           "run_recipe"]

@dataclass
class CompressResult:
    """What a run produced.

    Attributes:
        run_dir: The run directory.
        report: ``report.json`` as a dict (schema in the README).
        passed: The gate's verdict.
        violations: The gate's violation lines (empty when it passed).
        artifacts: Target name -> its engine file (targets that built one).
    """

    run_dir: Path
    report: dict[str, Any]
    passed: bool
    violations: list[str] = field(default_factory=list)
    artifacts: dict[str, Path] = field(default_factory=dict)

    @property
    def report_json(self) -> Path:
        return self.run_dir / "report.json"

    @property
    def report_md(self) -> Path:
        return self.run_dir / "report.md"

    @property
    def report_html(self) -> Path:
        return self.run_dir / "report.html"


def _recipe_dict(recipe: Recipe | Mapping[str, Any] | str | Path | None
                 ) -> tuple[dict[str, Any], Path | None]:
    """The recipe as a mapping, and the folder its relative paths resolve against."""
    if recipe is None:
        return {"version": 1}, None
    if isinstance(recipe, Recipe):
        return recipe_to_dict(recipe), None
    if isinstance(recipe, Mapping):
        return dict(recipe), None
    from edgecompress.inputs import load_user_yaml

    path = Path(recipe)
    raw = load_user_yaml(path, "recipe file")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping, got {type(raw).__name__}")
    return raw, path.resolve().parent


def compress(teacher: Any = None, student: Any = None, *, train: Any = None, test: Any = None,
             recipe: Recipe | Mapping[str, Any] | str | Path | None = None,
             targets: Sequence[Mapping[str, Any]] | None = None,
             out: str | Path = "runs/compress", force: str | None = None,
             overwrite: bool = False, **sections: Any) -> CompressResult:
    """Teacher -> distilled, pruned, INT8 student -> engines -> report and gate, in-process.

    Args:
        teacher: An ``nn.Module`` (trained, or to be fine-tuned by the finetune stage), a model
            spec dict as in a recipe, or a ``.pt2`` / TorchScript path; None: the recipe's.
        student: Same forms; None: the recipe's (a built-in student by default).
        train: Training data: a map-style ``Dataset`` of ``(image, label)`` (CHW float images)
            or an ``(x, y)`` pair of arrays/tensors (N, C, H, W). Split into train/val (and
            test, unless ``test`` is given) as the recipe's ``data`` section says.
        test: Held-out data in the same forms; kept whole.
        recipe: A recipe (path, dict or :class:`Recipe`) to start from; None: the defaults.
        targets: Recipe targets (dicts) replacing the recipe's.
        out: Run directory (created; reused to resume).
        force: Rerun this stage and all later ones.
        overwrite: Replace another run's directory.
        **sections: Top-level recipe sections merged over the recipe (``stages``, ``gate``,
            ``data``, ``name``, ``seed``, ``device``).

    Returns:
        The :class:`CompressResult` (a failed gate is a result, not an exception).

    Raises:
        EdgeCompressError: bad input (ConfigError, DataError, ModelError: nothing run), a
            missing runtime (BackendUnavailable), or a numeric mismatch (ParityError).
    """
    base, base_dir = _recipe_dict(recipe)
    raw = merge_mapping(base, sections)
    raw.setdefault("version", 1)
    out = Path(out)
    family = family_for(raw)
    raw = family.api_inputs(raw, teacher=teacher, student=student, train=train, test=test,
                            inputs_dir=out.parent / f"{out.name}.inputs")
    if targets is not None:
        raw["targets"] = [dict(t) for t in targets]
    recipe_obj = family.parse_recipe(raw, source=str(recipe) if isinstance(recipe, (str, Path))
                                     else "compress()", base_dir=base_dir)
    return run_recipe(recipe_obj, out, force=force, overwrite=overwrite)


def run_recipe(recipe: Any, out: str | Path, *, force: str | None = None,
               overwrite: bool = False) -> CompressResult:
    """Run a parsed recipe of any task into ``out`` and collect the result (the CLI's ``run``).
    Under torchrun only rank 0 writes the report; the other ranks get an empty ``report``."""
    from edgecompress.pipeline import Pipeline

    out = Path(out)
    Pipeline(recipe, out).run(force=force, overwrite=overwrite)
    if int(os.environ.get("RANK", "0")) != 0:
        return CompressResult(run_dir=out, report={}, passed=True)
    return collect_result(out)


def collect_result(out: Path) -> CompressResult:
    """The :class:`CompressResult` of a finished run directory (reads its report.json)."""
    report = json.loads((out / "report.json").read_text())
    artifacts = {t["name"]: out / t["artifact"] for t in report.get("targets", [])
                 if t.get("artifact")}
    gate = report.get("gate") or {}
    return CompressResult(run_dir=out, report=report, passed=bool(gate.get("passed")),
                          violations=list(gate.get("violations") or []), artifacts=artifacts)
