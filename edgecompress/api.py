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

import copy
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from edgecompress.errors import ConfigError, DataError, ModelError
from edgecompress.recipe import Recipe, parse_recipe, recipe_to_dict

_LIVE: dict[str, nn.Module] = {}
LIVE_FACTORY = "edgecompress.api:live_model"


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


def live_model(key: str) -> nn.Module:
    """The factory behind live modules: a fresh deep copy of the module registered as ``key``."""
    module = _LIVE.get(key)
    if module is None:
        raise ModelError(f"live module {key!r} is not registered in this process: it was passed "
                         "to edgecompress.compress() in another Python process. Call compress() "
                         "again with the same module to resume the run")
    return copy.deepcopy(module)


def register_module(module: nn.Module) -> dict[str, Any]:
    """Register ``module`` for :func:`live_model`; returns the recipe model spec naming it."""
    digest = hashlib.sha256(type(module).__qualname__.encode())
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    key = f"{type(module).__name__}-{digest.hexdigest()[:16]}"
    _LIVE[key] = copy.deepcopy(module).cpu()
    return {"kind": "factory", "factory": LIVE_FACTORY, "kwargs": {"key": key}}


def _model_spec(model: Any, role: str) -> dict[str, Any]:
    if isinstance(model, nn.Module):
        return register_module(model)
    if isinstance(model, Mapping):
        return dict(model)
    if isinstance(model, (str, Path)):
        path = Path(model)
        kind = "export" if path.suffix == ".pt2" else "torchscript"
        return {"kind": kind, "path": str(path)}
    raise ConfigError(f"{role}: expected an nn.Module, a model spec dict or a .pt2/TorchScript "
                      f"path, got {type(model).__name__}")


def _as_arrays(data: Any, role: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` float32 NCHW / int64 from an ``(x, y)`` pair or a map-style Dataset of
    ``(image, label)`` items."""
    if isinstance(data, tuple) and len(data) == 2:
        x, y = (np.asarray(getattr(a, "numpy", lambda a=a: a)()) for a in data)
    else:
        if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
            raise DataError(f"{role}: expected a map-style Dataset of (image, label) or an "
                            f"(x, y) pair, got {type(data).__name__}")
        items = [data[i] for i in range(len(data))]
        if not items:
            raise DataError(f"{role}: the dataset is empty")
        try:
            x = np.stack([np.asarray(item[0]) for item in items])
            y = np.asarray([int(item[1]) for item in items])
        except (TypeError, ValueError, IndexError) as err:
            raise DataError(f"{role}: items must be (image, label) with images of one shape: "
                            f"{err}") from None
    if len(x) != len(y):
        raise DataError(f"{role}: {len(x)} images but {len(y)} labels")
    return x.astype(np.float32), y.astype(np.int64)


def _write_data(train: Any, test: Any, inputs: Path) -> dict[str, Any]:
    from edgecompress.io import atomic_path

    x_train, y_train = _as_arrays(train, "train")
    arrays = {"x": x_train, "y": y_train}
    if test is not None:
        x_test, y_test = _as_arrays(test, "test")
        arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    inputs.mkdir(parents=True, exist_ok=True)
    path = inputs / "data.npz"
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return {"source": "npz", "path": str(path)}


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``; nested mappings merge, everything else (lists too) replaces."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


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
    raw = _merge(base, sections)
    raw.setdefault("version", 1)
    out = Path(out)
    if raw.get("task") == "text-classification":
        return _compress_text(raw, base_dir, out, force, overwrite, teacher=teacher,
                              student=student, targets=targets, data=[train, test])
    if teacher is not None:
        raw["teacher"] = _model_spec(teacher, "teacher")
    if student is not None:
        raw["student"] = _model_spec(student, "student")
    if targets is not None:
        raw["targets"] = [dict(t) for t in targets]
    if train is not None:
        data = {k: v for k, v in (raw.get("data") or {}).items() if k not in ("source", "path")}
        raw["data"] = {"name": "arrays passed to compress()", **data,
                       **_write_data(train, test, out.parent / f"{out.name}.inputs")}
    elif test is not None:
        raise ConfigError("test data without train data: pass train= as well")
    recipe_obj = parse_recipe(raw, source=str(recipe) if isinstance(recipe, (str, Path))
                              else "compress()", base_dir=base_dir)
    return run_recipe(recipe_obj, out, force=force, overwrite=overwrite)


def _compress_text(raw: dict[str, Any], base_dir: Path | None, out: Path, force: str | None,
                   overwrite: bool, *, teacher: Any, student: Any, targets: Any,
                   data: list[Any]) -> CompressResult:
    """A ``task: text-classification`` recipe (Hugging Face encoders) through the text path.
    ``teacher``/``student`` given as dicts merge into the recipe's sections."""
    for role, value in (("teacher", teacher), ("student", student)):
        if isinstance(value, Mapping):
            raw[role] = _merge(dict(raw.get(role) or {}), value)
        elif value is not None:
            raise ConfigError(f"text-classification: {role} must be a recipe section (dict "
                              "naming a local Hugging Face directory); live modules are "
                              "supported for image classification in this version")
    if any(d is not None for d in data):
        raise ConfigError("text-classification: give the data in the recipe's data section "
                          "(CSV/TSV/JSONL); train=/test= take image data in this version")
    if targets is not None:
        raw["targets"] = [dict(t) for t in targets]
    from edgecompress.families import get_family

    recipe_obj = get_family("text-classification").parse_recipe(raw, source="compress()",
                                                                base_dir=base_dir)
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
