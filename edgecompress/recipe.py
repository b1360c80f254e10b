"""The recipe: a YAML file validated into strict, typed, versioned pydantic models.

Every field has its default here and only here, and a description (shown by
``edgecompress schema``). Unknown keys are rejected with the dotted path of the bad key, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

# Re-exported: the strict base and the gate thresholds are shared with target profiles.
from edgecompress.config import (  # noqa: F401
    FIELD_MAXIMA,
    GateConfig,
    _Strict,
    check_field_range,
)
from edgecompress.errors import ConfigError
from edgecompress.recipe_compress import (  # noqa: F401  (re-exported: part of the recipe)
    PRUNE_IMPORTANCES,
    PRUNE_PLANS,
    PRUNE_TARGET_KEYS,
    ExportConfig,
    PruneConfig,
    QatConfig,
)
from edgecompress.recipe_data import DataConfig, PhotoTransformsConfig  # noqa: F401
from edgecompress.recipe_targets import RunGateConfig, TargetConfig  # noqa: F401

RECIPE_VERSION = 1


class ModelSpec(_Strict):
    """How to obtain a model: a built-in family member, a factory, TorchScript or torch.export."""

    kind: Literal["builtin", "factory", "zoo", "torchscript", "export"] = Field(
        "builtin", description="builtin: a member of the built-in CNN family; factory: "
        "'module:callable' (+ optional weights); zoo: a model id (torchvision:/timm:/hf:, "
        "the default kind when 'id' is given); torchscript: a TorchScript file; export: a "
        "torch.export .pt2 file.")
    id: str | None = Field(None, max_length=4096, description="Model id for kind 'zoo': "
                           "'torchvision:<name>', 'timm:<name>' or 'hf:<local directory>'. "
                           "Built with random weights; pretrained ones come from 'weights' "
                           "(never downloaded).")
    num_classes: int | None = Field(None, ge=1, le=1_000_000, description="Kind 'zoo': "
                                    "classes the model (and its 'weights') was built with; "
                                    "default: the dataset's. The head is swapped for the "
                                    "dataset's class count when they differ.")
    family: Literal["resnet", "mobilenet"] = Field("resnet", description="Built-in family.")
    width: float = Field(1.0, gt=0, le=8, description="Channel multiplier of the built-in family.")
    depth: int = Field(1, ge=1, le=8, description="Blocks per stage of the built-in family.")
    factory: str | None = Field(None, description="'package.module:callable' or "
                                "'path/to/file.py:callable' returning an nn.Module.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the "
                                   "factory.")
    weights: Path | None = Field(None, description="State dict (.pt/.pth loaded with "
                                 "weights_only=True, or .safetensors) applied after building.")
    path: Path | None = Field(None, description="TorchScript or .pt2 file for those kinds.")
    trust_pickle: bool = Field(False, description="Allow a .pt checkpoint to run pickled code. "
                               "Only "
                               "for files you trust.")

    @model_validator(mode="before")
    @classmethod
    def _id_means_zoo(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("id") is not None and "kind" not in data:
            data = {**data, "kind": "zoo"}
        return data

    @model_validator(mode="after")
    def _needs(self) -> ModelSpec:
        if self.kind == "zoo" and not self.id:
            raise ValueError("kind 'zoo' needs 'id' (e.g. 'torchvision:resnet18')")
        if self.id is not None and self.kind != "zoo":
            raise ValueError(f"'id' is only read by kind 'zoo', not {self.kind!r}")
        if self.kind == "factory" and not self.factory:
            raise ValueError("kind 'factory' needs 'factory: module:callable'")
        if self.kind in ("torchscript", "export") and self.path is None:
            raise ValueError(f"kind '{self.kind}' needs 'path'")
        return self


class FinetuneConfig(_Strict):
    """Adapt the given (pretrained or initialised) model into the teacher for this task."""

    enabled: bool = Field(True, description="Run the stage (off: the teacher is used as given).")
    epochs: int = Field(30, ge=1, description="Maximum epochs.")
    lr: float = Field(3e-3, gt=0, description="AdamW learning rate (keep it low for pretrained "
                      "backbones).")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    batch_size: int = Field(64, ge=1, description="Per-process batch size.")
    head: str | None = Field(None, description="Dotted name of the classifier layer; default: the "
                             "last nn.Linear. Replaced when its class count differs from the data.")
    freeze_backbone: bool = Field(False, description="Train only the head at first.")
    unfreeze_every: int | None = Field(None, ge=1, description="With freeze_backbone: unfreeze one "
                                       "more top-level block (from the top) every N epochs.")
    patience: int = Field(6, ge=1, description="Early stopping: epochs without validation "
                          "improvement before stopping; the best checkpoint is kept.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Cross-entropy label smoothing.")
    augment: Literal["none", "shift"] = Field("none", description="Batch augmentation: random "
                                              "translations of up to 1/8 of the image size.")


class FeatureMatch(_Strict):
    """One intermediate-feature distillation pair."""

    teacher: str = Field(description="Dotted module name in the teacher (its output is matched).")
    student: str = Field(description="Dotted module name in the student.")
    weight: float = Field(1.0, ge=0, description="Weight of this MSE term.")


class DistillSearch(_Strict):
    """A budgeted search of the distillation settings, judged on the validation split.

    The candidates are the grid of the listed values (a list left out pins that setting to the
    stage's own value); when the grid is larger than ``max_candidates``, an evenly spaced subset
    of it is tried. Each candidate trains the same student from the same initialisation for
    ``epochs``; the one with the best validation accuracy (the first on ties) is then used.
    """

    temperatures: list[float] | None = Field(None, min_length=1, description="Temperatures "
                                             "to try (default: the stage's temperature only).")
    alphas: list[float] | None = Field(None, min_length=1, description="Soft-term weights to "
                                       "try, each in [0, 1) so hard labels always keep a weight "
                                       "(default: the stage's alpha only).")
    losses: list[Literal["kd", "dkd", "dist"]] | None = Field(
        None, min_length=1, description="Logit losses to try (default: the stage's loss only).")
    max_candidates: int = Field(6, ge=1, description="Most candidates trained (the budget).")
    epochs: int | None = Field(None, ge=1, description="Epochs per candidate (default: the "
                               "stage's epochs; then the winner is used as trained, not "
                               "retrained).")

    @field_validator("temperatures")
    @classmethod
    def _positive(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and any(t <= 0 for t in value):
            raise ValueError("temperatures must be > 0")
        return value

    @field_validator("alphas")
    @classmethod
    def _hard_labels_kept(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and any(not 0 <= a < 1 for a in value):
            raise ValueError("alphas must be in [0, 1) (alpha 1 would drop the hard labels)")
        return value


class DistillConfig(_Strict):
    """Knowledge distillation from the frozen teacher into the student.

    With ``baseline`` on, the distilled student is compared with the hard-label one on the
    validation split and the better one is carried forward (``distill/student.pt``).

    The defaults (kd, T 2, alpha 0.5, mixup, 60 epochs, patience 20) are function matching
    (Beyer et al. 2022): teacher and student see the same mixed batch, so the teacher labels
    points the hard labels never covered, and the schedule is long enough for that to pay.
    They are the setting that made distillation beat the equally trained hard-label student in
    ``benchmarks/distill_quality.py`` (README, "Distillation"); hard labels keep half the weight.
    """

    enabled: bool = Field(True, description="Run the stage.")
    epochs: int = Field(60, ge=1, description="Maximum epochs.")
    lr: float = Field(5e-3, gt=0, description="AdamW peak learning rate (one-cycle schedule).")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    batch_size: int = Field(64, ge=1, description="Per-process batch size.")
    loss: Literal["kd", "dkd", "dist"] = Field("kd", description="Soft (teacher) term: kd "
                                               "(Hinton: T^2 * KL), dkd (Decoupled KD, Zhao et "
                                               "al. 2022) or dist (DIST: Pearson correlations "
                                               "of softened predictions, Huang et al. 2022).")
    temperature: float = Field(2.0, gt=0, description="Softmax temperature T of the soft term.")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the soft term; (1 - alpha) "
                         "weights the hard-label cross-entropy.")
    dkd_beta: float = Field(8.0, ge=0, description="Weight of DKD's non-target term (its target "
                            "term has weight 1); used by loss dkd only.")
    search: DistillSearch | None = Field(None, description="Optional budgeted search over "
                                         "temperature / alpha / loss on the validation split; "
                                         "null: the settings above are used as given.")
    features: list[FeatureMatch] | Literal["auto"] = Field(
        default_factory=list, description="Optional intermediate-feature matching through learned "
        "1x1 projections (MSE): a list of layer pairs, or 'auto' to pair layers from their "
        "output shapes (CNN stage ends by spatial size, other blocks by depth; "
        "edgecompress/stages/feature_match.py). Off by default: in "
        "benchmarks/distill_quality.py auto did not make the shipped student better than kd "
        "alone (README, Distillation).")
    feature_pairs: int = Field(3, ge=1, description="With features 'auto': most layer pairs "
                               "matched (the deepest ones).")
    feature_weight: float = Field(0.1, ge=0, description="With features 'auto': the MSE weight "
                                  "of each pair (0.1 measured better than 1.0).")
    patience: int = Field(20, ge=1, description="Early stopping patience in epochs (best "
                          "validation checkpoint kept). Long on purpose: with mixup and a "
                          "one-cycle schedule the best epoch comes late.")
    augment: Literal["none", "shift", "mixup", "shift+mixup", "cutmix", "shift+cutmix"] = Field(
        "mixup", description="Batch augmentation; teacher and student see the same augmented "
        "inputs (function matching), the baseline gets the same augmentation. Adds to the "
        "data's photo transforms when those are set.")
    baseline: bool = Field(True, description="Also train the same student on hard labels only with "
                           "the same budget, and carry forward whichever of the two is better on "
                           "the validation split (the distilled one on a tie).")

    @field_validator("features", mode="before")
    @classmethod
    def _features_form(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "auto":
            raise ValueError(f"must be 'auto' or a list of {{teacher, student, weight}} layer "
                             f"pairs, got {value!r}")
        return value

    @model_validator(mode="after")
    def _auto_options_need_auto(self) -> DistillConfig:
        # Only values that differ from the defaults: a dumped recipe (recipe.json, the API's
        # merge) writes every field, and must parse again.
        fields = type(self).model_fields
        extra = sorted(name for name in ("feature_pairs", "feature_weight")
                       if name in self.model_fields_set
                       and getattr(self, name) != fields[name].default)
        if extra and self.features != "auto":
            raise ValueError(f"{', '.join(extra)} only apply to features: auto (an explicit "
                             "list sets each pair's weight itself)")
        return self


class StagesConfig(_Strict):
    """Per-stage settings; stages run in this order."""

    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    qat: QatConfig = Field(default_factory=QatConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)


class Recipe(_Strict):
    """A whole compression recipe."""

    version: Literal[1] = Field(RECIPE_VERSION, description="Recipe schema version.")
    task: Literal["image-classification"] = Field(
        "image-classification", description="The model family (edgecompress tasks lists them); "
        "text-classification recipes have their own sections.")
    name: str = Field("recipe", description="A name for the run (shown in the report).")
    seed: int = Field(0, description="Seed for data splits, initialisation and training.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Training device; auto "
                                                   "uses CUDA when present.")
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: ModelSpec = Field(default_factory=lambda: ModelSpec(width=1.0, depth=2))
    student: ModelSpec = Field(default_factory=lambda: ModelSpec(width=0.25, depth=1))
    stages: StagesConfig = Field(default_factory=StagesConfig)
    targets: list[TargetConfig] = Field(
        default_factory=lambda: [TargetConfig.model_validate({})],
        description="Deployment targets; each gets an engine and a benchmark.")
    gate: RunGateConfig = Field(default_factory=RunGateConfig)

    @field_validator("targets")
    @classmethod
    def _unique_targets(cls, value: list[TargetConfig]) -> list[TargetConfig]:
        names = [t.name for t in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate target names: {', '.join(dupes)}")
        return value


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid recipe"]
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "(top level)"
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def _resolve_paths(recipe: Recipe, base: Path) -> Recipe:
    """Make relative file paths in the recipe relative to the recipe file, not the cwd."""
    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p).resolve()

    recipe.data.path = fix(recipe.data.path)
    for spec in (recipe.teacher, recipe.student):
        spec.weights = fix(spec.weights)
        spec.path = fix(spec.path)
    return recipe


def parse_recipe(raw: Any, *, source: str = "<recipe>", base_dir: Path | None = None) -> Recipe:
    """Validate a parsed YAML/JSON mapping into a :class:`Recipe`.

    Raises:
        ConfigError: naming ``source`` and the dotted path of every bad key.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a recipe must be a mapping, got {type(raw).__name__}")
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None
    return _resolve_paths(recipe, base_dir or Path.cwd())


def read_recipe_yaml(path: str | Path) -> Any:
    """The parsed YAML of a recipe file (image or text), or ``ConfigError`` naming the file.

    Read through :func:`edgecompress.inputs.load_user_yaml`: UTF-8 only, size, alias and
    nesting limits, JSON-compatible values only.
    """
    from edgecompress.inputs import load_user_yaml

    return load_user_yaml(path, "recipe file")


def load_recipe_file(path: str | Path, parse: Callable[..., Any]) -> Any:
    """Read a recipe YAML file and validate it with ``parse`` (``parse_recipe`` or the text
    path's); relative paths resolve against its directory, an unnamed recipe takes the file's
    stem as its name. A file must say which recipe ``version`` it is written for."""
    path = Path(path)
    raw = read_recipe_yaml(path)
    if raw is None:
        raise ConfigError(f"{path}: empty recipe file (a recipe needs at least 'version: "
                          f"{RECIPE_VERSION}')")
    if isinstance(raw, dict) and "version" not in raw:
        raise ConfigError(f"{path}: version: missing; add 'version: {RECIPE_VERSION}' (the "
                          "recipe schema version the file is written for)")
    recipe = parse(raw, source=str(path), base_dir=path.resolve().parent)
    if recipe.name == "recipe":
        recipe.name = path.stem
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe YAML file (relative paths resolve against its directory)."""
    return load_recipe_file(path, parse_recipe)


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """JSON-ready dict of the resolved recipe (paths as strings)."""
    return recipe.model_dump(mode="json")
