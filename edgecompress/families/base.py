"""The model-family contract: what differs between image classification, text classification
and any family added later, behind one small interface, so the pipeline, the CLI, the Python API
and the report are written once.

Peers keep one code path plus per-architecture adapters (ModelOpt's mode registry, Optimum's
export configs); this is ours. A family is registered by its recipe ``task`` (see
:mod:`edgecompress.families`), and everything outside the family asks it, never an
``if task == ...``:

- the recipe: its schema (one top-level ``task`` discriminator picks the family), validation,
  and the resolved dict written to ``recipe.json`` and hashed by the stages;
- the run: the context its stages share (dataset, tokenizer, ...), the stage list, and the
  preflight that checks every input before anything is written;
- the report: the dataset/teacher/student blocks of ``report.json`` and any lines of its own
  in ``report.md``; the shared report stage adds targets, stage timings, environment and gate
  and renders report.md, report.html and junit.xml the same way for every family.

Stage classes are shared: data, teacher, distill, prune, export, bench and report (the
training and export stages run the family's steps: :mod:`edgecompress.stages.teacher`,
:mod:`edgecompress.stages.student`, :mod:`edgecompress.stages.export`; the bench stage asks
the family which files each target's engines come from and what they are fed). The image
family adds its qat stage (the text family makes its INT8 files in its export steps).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from edgecompress.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover - typing only (stages import torch)
    from edgecompress.distributed import DistInfo
    from edgecompress.stages.base import Context, Stage


class ModelFamily(ABC):
    """One kind of model and task (image classification, text classification, ...).

    Subclasses set :attr:`task` (the recipe's ``task`` value) and :attr:`summary`, implement the
    abstract methods, and are registered with :func:`edgecompress.families.register_family`.
    Methods take the family's own recipe object (what :meth:`parse_recipe` returns).
    """

    #: The recipe's ``task`` value that selects this family.
    task: ClassVar[str]
    #: One line for ``edgecompress tasks`` and error messages.
    summary: ClassVar[str]
    #: Stage names whose manifests feed the report, in pipeline order.
    report_upstream: ClassVar[tuple[str, ...]]
    #: Packages (distribution names) whose versions the report's environment records.
    report_packages: ClassVar[tuple[str, ...]] = ()

    # --- recipe ------------------------------------------------------------------------------

    @abstractmethod
    def parse_recipe(self, raw: dict[str, Any], *, source: str, base_dir: Path | None) -> Any:
        """Validate a parsed mapping into this family's recipe (relative paths resolved against
        ``base_dir``).

        Raises:
            ConfigError: naming ``source`` and the dotted path of every bad key.
        """

    @abstractmethod
    def recipe_model(self) -> type:
        """The pydantic model of this family's recipe (``edgecompress schema`` prints it)."""

    @abstractmethod
    def recipe_to_dict(self, recipe: Any) -> dict[str, Any]:
        """The JSON-ready resolved recipe (``recipe.json``, stage config hashes)."""

    def api_inputs(self, raw: dict[str, Any], *, teacher: Any, student: Any, train: Any,
                   test: Any, inputs_dir: Path) -> dict[str, Any]:
        """Fold :func:`edgecompress.compress`'s in-memory arguments into the raw recipe.

        This default takes ``teacher``/``student`` as recipe sections (dicts merged over the
        recipe's) and refuses live modules and in-memory data, naming the task; a family that
        accepts them (the image family: ``nn.Module``s, arrays, ``Dataset``s) overrides it.
        ``inputs_dir`` is where such inputs may be written (next to the run directory).
        """
        from edgecompress.live import merge_mapping

        raw = dict(raw)
        for role, value in (("teacher", teacher), ("student", student)):
            if isinstance(value, Mapping):
                raw[role] = merge_mapping(dict(raw.get(role) or {}), value)
            elif value is not None:
                raise ConfigError(f"{self.task}: {role} must be a recipe section (a dict); live "
                                  f"modules ({type(value).__name__}) are accepted by "
                                  f"image-classification only in this version")
        if train is not None or test is not None:
            raise ConfigError(f"{self.task}: give the data in the recipe's data section; "
                              "train=/test= take image data in this version")
        return raw

    def check_sources(self, recipe: Any) -> None:
        """Validate-time checks that need no data and no training: packages present, model ids
        and factories resolvable. Raises ``BackendUnavailable`` (exit 3) or ``ConfigError``.
        The default checks nothing."""
        return None

    # --- run ---------------------------------------------------------------------------------

    @abstractmethod
    def context(self, recipe: Any, run_dir: Path, dist_info: DistInfo) -> Context:
        """The object the stages share for one run in one process."""

    @abstractmethod
    def stages(self) -> list[Stage]:
        """The stages in pipeline order (the last one is the shared report stage)."""

    @abstractmethod
    def preflight(self, ctx: Context) -> None:
        """Check every input before anything is written (data loads, models build and fit the
        data, targets are supported). Bad input fails here, leaving no run directory."""

    # --- data --------------------------------------------------------------------------------

    @abstractmethod
    def data_fingerprint(self, ctx: Context) -> str:
        """A hash of the run's data: when it changes, every stage from ``data`` on reruns."""

    @abstractmethod
    def record_data(self, ctx: Context, out_dir: Path) -> tuple[dict[str, Path], dict[str, Any]]:
        """The shared data stage's work: load and split the data (``ctx``), write what the run
        records of it into ``out_dir`` (``dataset.json``; a calibration subset for families that
        calibrate) and return ``(outputs, metrics)``."""

    # --- training ----------------------------------------------------------------------------

    def teacher_steps(self, ctx: Context) -> Any:
        """What the shared teacher stage runs for this family (a
        :class:`~edgecompress.stages.teacher.TeacherSteps`)."""
        raise NotImplementedError(f"{self.task}: the teacher stage needs teacher_steps")

    def distill_steps(self, ctx: Context) -> Any:
        """What the shared distill stage runs (a
        :class:`~edgecompress.stages.student.DistillSteps`)."""
        raise NotImplementedError(f"{self.task}: the distill stage needs distill_steps")

    def prune_steps(self, ctx: Context) -> Any:
        """What the shared prune stage runs (a
        :class:`~edgecompress.stages.student.PruneSteps`)."""
        raise NotImplementedError(f"{self.task}: the prune stage needs prune_steps")

    def export_steps(self, ctx: Context) -> Any:
        """What the shared export stage runs (an
        :class:`~edgecompress.stages.export.ExportSteps`)."""
        raise NotImplementedError(f"{self.task}: the export stage needs export_steps")

    # --- bench (the shared bench stage asks these; a family without engines needs none) ----

    def bench_inputs(self, ctx: Context) -> dict[str, Path]:
        """Files the bench stage's results depend on (hashed for resume)."""
        raise NotImplementedError(f"{self.task}: the bench stage needs bench_inputs")

    def bench_reference(self, ctx: Context) -> tuple[Any, Any]:
        """``(logits of the final float student on the test split, macs)`` where
        ``macs(target)`` is the student's MACs per sample at that target's input (or None)."""
        raise NotImplementedError(f"{self.task}: the bench stage needs bench_reference")

    def eval_set(self, ctx: Context, target: Any) -> Any:
        """The test split as ``target``'s engines are fed it (an
        :class:`~edgecompress.bench.evalset.EvalSet`)."""
        raise NotImplementedError(f"{self.task}: the bench stage needs eval_set")

    def engine_sources(self, ctx: Context, target: Any, fp32_reference: Any) -> Any:
        """The files ``target``'s engines are built from and the logits its student engine is
        compared with (:class:`~edgecompress.stages.bench.EngineSources`), or a string saying
        why this target has nothing to build (it is then reported skipped)."""
        raise NotImplementedError(f"{self.task}: the bench stage needs engine_sources")

    # --- report ------------------------------------------------------------------------------

    @abstractmethod
    def report_body(self, ctx: Context, manifests: dict[str, dict[str, Any]],
                    targets: list[dict[str, Any]]) -> dict[str, Any]:
        """The family's part of ``report.json``: at least ``dataset``, ``teacher`` (with
        ``accuracy``) and ``student`` (with ``accuracy_fp32``); optionally ``distillation``,
        ``quantization`` and blocks of its own. ``manifests`` holds the metrics of every stage
        in :attr:`report_upstream`; ``targets`` the bench results (read-only)."""

    def report_markdown(self, report: dict[str, Any]) -> str:
        """Lines of the family's own appended to the common report.md ("" for none)."""
        return ""

    def run_blocks(self, report: dict[str, Any]) -> dict[str, Any]:
        """Run-level inputs of the gate (e.g. ``{"distillation": ...}``)."""
        return {}
