"""The recipe: a YAML file validated into strict, typed, versioned pydantic models.

Every field has its default here and only here, and a description (shown by
``edgecompress recipe-schema``). Unknown keys are rejected with the dotted path of the bad key, so a
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

RECIPE_VERSION = 1


class PhotoTransformsConfig(_Strict):
    """Real-photo transforms (torchvision transforms v2) for image folders, streamed per batch."""

    preset: Literal["photo"] = Field("photo", description="photo: train RandomResizedCrop + "
                                     "horizontal flip (+ colour jitter / RandAugment); eval "
                                     "Resize + CenterCrop.")
    crop_size: int = Field(224, ge=8, le=4096, description="Side of the square crop the model "
                           "sees (train and eval).")
    resize_size: int | None = Field(None, ge=8, le=8192, description="Eval: shorter side resized "
                                    "to this before the centre crop (default crop_size * "
                                    "256 / 224).")
    scale: tuple[float, float] = Field((0.08, 1.0), description="Train: RandomResizedCrop's "
                                       "area fraction range (min, max), 0 < min <= max <= 1.")
    hflip: bool = Field(True, description="Train: random horizontal flip.")
    color_jitter: float = Field(0.0, ge=0, le=1, description="Train: brightness/contrast/"
                                "saturation jitter strength (0 = off).")
    randaugment: bool = Field(False, description="Train: RandAugment (default settings).")

    @model_validator(mode="after")
    def _scale_range(self) -> PhotoTransformsConfig:
        low, high = self.scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"scale must be (min, max) with 0 < min <= max <= 1, got "
                             f"{list(self.scale)}")
        return self


class DataConfig(_Strict):
    """Where the data comes from and how it is split."""

    source: Literal["digits", "npz", "idx", "imagefolder", "hf"] = Field(
        "digits", description="Dataset kind: built-in sklearn digits, an .npz file, a directory of "
        "MNIST-format IDX files (optionally .gz), an image folder (one subfolder per class; "
        "train/ + test/ subfolders give the test split; or a .csv/.json index of "
        "path,label[,split]), or hf: a Hugging Face dataset directory written by "
        "save_to_disk (train [+ test] splits, an Image column and a label column).")
    path: Path | None = Field(None, description="File or directory for npz/idx/imagefolder; "
                              "relative paths resolve against the recipe's directory.")
    npz_keys: tuple[str, str] = Field(("x", "y"), description="Array keys of inputs and labels in "
                                      "an .npz (x_train/y_train/x_test/y_test are also "
                                      "recognised).")
    image_size: tuple[int, int] | None = Field(None, description="(H, W) to resize image-folder "
                                               "images to.")
    grayscale: bool = Field(False, description="Load image-folder images as one channel.")
    val_fraction: float = Field(0.15, gt=0, lt=0.5, description="Fraction held out for early "
                                "stopping / model selection.")
    test_fraction: float = Field(0.2, gt=0, lt=0.5, description="Fraction held out for the final "
                                 "accuracy numbers (ignored when the data has its own test split).")
    limit: int | None = Field(None, gt=0, description="Older, blunt option: a stratified subsample "
                              "of at most this many samples of ALL the data, taken before "
                              "splitting; a given test split (idx t10k, npz x_test) shrinks in "
                              "proportion (logged and recorded in the report). Prefer train_limit "
                              "/ eval_limit; cannot be combined with them.")
    train_limit: int | None = Field(None, gt=0, description="At most this many samples in train + "
                                    "val together (stratified, seeded); the test split is "
                                    "unchanged, a given one stays whole.")
    eval_limit: int | None = Field(None, gt=0, description="At most this many test samples "
                                   "(stratified, seeded); off by default. Accuracy is then "
                                   "measured on a subset (recorded in the report).")
    name: str | None = Field(None, min_length=1, max_length=200, description="The dataset's "
                             "name in logs and the report (default: the file or directory "
                             "name).")
    calibration_samples: int = Field(256, gt=0, description="Size of the stratified calibration "
                                     "subset sampled from the train split and saved in the run.")
    image_column: str | None = Field(None, min_length=1, max_length=200, description="Source hf: "
                                     "the image column (default image or img).")
    label_column: str | None = Field(None, min_length=1, max_length=200, description="Source hf: "
                                     "the label column (default label or labels).")
    stream: Literal["auto"] | bool = Field("auto", description="true: splits stay on disk "
                                           "(image folders, hf: decoded per batch in DataLoader "
                                           "workers) or in their own dtype (idx memory-mapped, "
                                           "npz: converted per batch); false: float32 arrays in "
                                           "memory; auto: stream above 512 MiB of float32 "
                                           "pixels or with photo transforms.")
    workers: int | None = Field(None, ge=0, le=64, description="DataLoader worker processes for "
                                "streamed images (default: none below 512 images per pass, "
                                "else up to 4, one less than the CPU count).")
    transforms: PhotoTransformsConfig | None = Field(None, description="Real-photo transforms "
                                                     "for image folders (implies streaming; "
                                                     "replaces image_size).")
    mean: list[float] | None = Field(None, min_length=1, max_length=4, description="Per-channel "
                                     "mean of pixels in [0, 1] to normalise with (with std); "
                                     "default: computed on the train split.")
    std: list[float] | None = Field(None, min_length=1, max_length=4, description="Per-channel "
                                    "std to normalise with (with mean), each > 0.")
    stats_samples: int = Field(1000, gt=0, le=1_000_000, description="Streamed image folders: "
                               "mean/std (when not given) are computed on this many seeded train "
                               "images.")

    @model_validator(mode="after")
    def _streaming(self) -> DataConfig:
        if self.source not in ("imagefolder", "hf") and self.transforms is not None:
            raise ValueError(f"transforms needs source: imagefolder or hf (source "
                             f"{self.source!r} holds arrays)")
        if self.transforms is not None and self.image_size is not None:
            raise ValueError("image_size and transforms cannot be combined: the photo "
                             "transforms resize (resize_size) and crop (crop_size) themselves")
        if self.transforms is not None and self.stream is False:
            raise ValueError("transforms decode every image per batch and need streaming; "
                             "remove stream: false")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std must be given together")
        if self.std is not None and (len(self.std) != len(self.mean) or min(self.std) <= 0):
            raise ValueError(f"std must have one positive value per mean value, got {self.std}")
        return self

    @model_validator(mode="after")
    def _one_kind_of_limit(self) -> DataConfig:
        if self.limit is not None and (self.train_limit is not None
                                       or self.eval_limit is not None):
            raise ValueError("limit cannot be combined with train_limit / eval_limit (limit "
                             "subsamples all data, test split included); use train_limit and "
                             "eval_limit")
        return self


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
        extra = sorted({"feature_pairs", "feature_weight"} & self.model_fields_set)
        if extra and self.features != "auto":
            raise ValueError(f"{', '.join(extra)} only apply to features: auto (an explicit "
                             "list sets each pair's weight itself)")
        return self


PRUNE_IMPORTANCES = ("l1", "l2", "taylor", "fpgm")
PRUNE_TARGET_KEYS = ("ratio", "target_macs_ratio", "target_params_ratio")
#: How a budget is shared between channel groups (edgecompress.prune.budget documents each).
PRUNE_PLANS = ("greedy", "uniform", "global")


class PruneConfig(_Strict):
    """Structured pruning of the distilled student, with distillation recovery fine-tuning.

    Whole channels are removed (dependency-aware across residual adds and depthwise convs), so
    the dense kernels really shrink. The target is exactly one of a channel ratio or a
    MACs/params budget relative to the distilled student.
    """

    enabled: bool = Field(False, description="Run the stage (off: the distilled student is "
                          "exported as is).")
    ratio: float | None = Field(None, gt=0, lt=1, description="Channel sparsity: fraction of "
                                "the channels of every prunable group removed.")
    target_macs_ratio: float | None = Field(None, gt=0, lt=1, description="Budget: prune until "
                                            "MACs <= this fraction of the distilled student's "
                                            "(landing within 10% below it).")
    target_params_ratio: float | None = Field(None, gt=0, lt=1, description="Budget: prune until "
                                              "parameters <= this fraction of the distilled "
                                              "student's (landing within 10% below it).")
    plan: Literal["greedy", "uniform", "global"] = Field(
        "uniform", description="How the target is shared between channel groups. uniform "
        "(default): every group keeps the same fraction of its channels, found by bisection on "
        "the cost model; greedy: remove the blocks that lose the least importance per MAC/param "
        "saved (thins the high-resolution layers first, often alone); global: remove the "
        "network-wide least important blocks (scores divided by their group's mean), whatever "
        "they cost. For a channel `ratio`, greedy and uniform both remove that fraction of "
        "every group, global removes that fraction of all channels together. uniform is the "
        "default because it beat greedy on both architectures of benchmarks/prune_plans.py and "
        "had the best mean (50% MACs, Fashion-MNIST, one seed; test accuracy greedy/uniform/"
        "global: resnet18 74.6/75.9/76.6 %, mobilenet_v2 34.2/57.5/50.3 %).")
    importance: Literal["l1", "l2", "taylor", "fpgm"] = Field(
        "l2", description="Channel importance: weight L1/L2 norm, first-order Taylor "
        "(|w * dL/dw|, from a gradient pass on a few train batches), or FPGM (distance to the "
        "geometric median).")
    round_to: int = Field(8, ge=1, description="Keep channel counts multiples of this "
                          "(8 suits SIMD/INT8 kernels); 1 = no rounding.")
    ignored_layers: list[str] = Field(default_factory=list, description="Dotted layer names "
                                      "whose output channels are never pruned (the classifier "
                                      "always is).")
    steps: int = Field(1, ge=1, description="Iterative pruning: reach the target in this many "
                       "slices, recovering after each.")
    recovery_epochs: int = Field(20, ge=0, description="Distillation fine-tuning epochs after "
                                 "each step (0: no recovery); the best validation epoch is kept.")
    lr: float = Field(5e-3, gt=0, description="AdamW learning rate of recovery (one-cycle, so it "
                      "warms up from lr/25).")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay of recovery.")
    batch_size: int = Field(64, ge=1, description="Per-process batch size of recovery and of the "
                            "Taylor gradient pass.")
    alpha: float = Field(0.9, ge=0, le=1, description="Weight of the KD term during recovery; "
                         "(1 - alpha) weights the hard-label cross-entropy.")
    temperature: float = Field(4.0, gt=0, description="Softmax temperature T of the KD term.")
    taylor_batches: int = Field(8, ge=1, description="Train batches whose gradients the Taylor "
                                "importance accumulates.")

    @model_validator(mode="after")
    def _one_target(self) -> PruneConfig:
        given = [key for key in PRUNE_TARGET_KEYS if getattr(self, key) is not None]
        if len(given) > 1:
            raise ValueError(f"set only one of {', '.join(PRUNE_TARGET_KEYS)} (got "
                             f"{' and '.join(given)})")
        if self.enabled and not given:
            raise ValueError(f"enabled pruning needs one of {', '.join(PRUNE_TARGET_KEYS)}")
        return self


QAT_MODES = ("qat", "ptq")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


class QatConfig(_Strict):
    """INT8: quantization-aware training (or calibration-only PTQ) of the final student.

    One quantized model is produced per preset the int8 targets need (``ort-x86`` for ONNX
    Runtime, ``tensorrt``, ``tflite``), all from the same pruned student.
    """

    enabled: bool = Field(False, description="Run the stage (needed by every int8 target).")
    mode: Literal["qat", "ptq"] = Field("qat", description="qat: fake-quant training with the "
                                        "teacher distilling; ptq: calibration only (no labels "
                                        "or training needed).")
    epochs: int = Field(4, ge=1, description="QAT epochs (short: the student is already trained).")
    lr: float = Field(5e-4, gt=0, description="AdamW learning rate of QAT (cosine decay).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    batch_size: int = Field(64, ge=1, description="QAT batch size.")
    temperature: float = Field(4.0, gt=0, description="KD temperature while fine-tuning.")
    alpha: float = Field(0.9, ge=0, le=1, description="Weight of the KD term (vs hard labels).")
    freeze_observers_after: int | None = Field(None, ge=0, description="Optimizer steps after "
                                               "which quantization ranges stop updating "
                                               "(default: half of the QAT steps).")
    freeze_bn_after: int | None = Field(None, ge=0, description="Optimizer steps after which "
                                        "BatchNorm statistics are frozen (default: 2/3 of the "
                                        "QAT steps).")
    compare_with_ptq: bool = Field(True, description="In qat mode, also calibrate a PTQ model "
                                   "and keep it unless QAT beats it on the validation split "
                                   "(QAT is then never worse than PTQ where it is measured).")
    calibration: Literal["minmax", "percentile", "entropy"] = Field(
        "minmax", description="PTQ range estimation on the saved calibration set.")
    percentile: float = Field(99.99, gt=50, le=100, description="Percentile of the "
                              "'percentile' calibration.")
    sensitivity: bool = Field(False, description="Measure each conv/linear layer's accuracy drop "
                              "when it alone is quantized (written to the report).")
    max_accuracy_drop: float | None = Field(None, ge=0, description="Accuracy criterion: keep "
                                            "the most sensitive layers in FP32 until the int8 "
                                            "model is within this many pp of the FP32 student "
                                            "on the validation split (implies sensitivity).")
    max_fallback_layers: int = Field(4, ge=1, description="Most layers the accuracy criterion "
                                     "may keep in FP32.")
    keep_fp32: list[str] = Field(default_factory=list, description="Layers (dotted module names) "
                                 "always kept in FP32.")
    min_top1_agreement: float = Field(
        0.97, ge=0, le=1, description="Parity of the exported int8 model (the engine's kernels) "
        "with the PyTorch int8 model on the test split: min fraction of samples with the same "
        "top-1 class. 0.97 because fused int8 kernels legitimately round differently from "
        "PyTorch's reference and the differences accumulate with depth: a ResNet-18 measured "
        "0.983, a small CNN on an AVX2 CPU 0.977; only samples whose top-2 margin is within that "
        "noise flip. A broken export (wrong scale, weight layout, saturation) agrees on 0.1-0.5.")
    max_metric_diff_pp: float = Field(
        2.0, ge=0, le=100, description="Parity: max difference of the task metric (test "
        "accuracy) between the exported int8 model and the PyTorch int8 model, in percentage "
        "points (either direction). Flipped samples that cancel out cost nothing here; a "
        "systematic error does.")
    rtol: float | None = Field(
        None, gt=0, description="Opt-in parity criterion: max abs logit difference between the "
        "exported int8 model and the PyTorch int8 model, relative to the largest |logit|. null "
        "(default): not checked, only reported (max_abs_diff): on deep networks one int8 step "
        "of difference early on grows to well above 5 % of a logit without changing decisions.")


class ExportConfig(_Strict):
    """ONNX export and its acceptance check."""

    opset: int = Field(18, ge=18, le=23,
                       description="ONNX opset (the dynamo exporter needs >= 18).")
    dynamic_batch: bool = Field(True, description="Export with a dynamic batch dimension.")
    atol: float = Field(1e-3, gt=0, description="Max abs logit difference accepted vs PyTorch.")
    min_top1_agreement: float = Field(0.99, ge=0, le=1, description="Min top-1 agreement with "
                                      "PyTorch on the test split.")


class StagesConfig(_Strict):
    """Per-stage settings; stages run in this order."""

    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    qat: QatConfig = Field(default_factory=QatConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)


class RunGateConfig(GateConfig):
    """The recipe's top-level ``gate``: every target's thresholds, plus run-level ones."""

    min_distillation_gain_pp: float | None = Field(
        None, description="Run-level: min test-accuracy gain of the distilled student over the "
        "hard-label one, in pp (needs stages.distill.baseline; negative values tolerate a "
        "loss). Fails the run when distillation stops paying, even though the stage then "
        "carries the hard-label student forward.")


def _local_target_name(raw: dict[str, Any]) -> str:
    """A profile-less target's default name: the ISA class it runs on and its precision, so a
    report never calls an AVX2 measurement 'x86-avx512'."""
    from edgecompress.isa import cpu_info

    isa = raw.get("isa") if isinstance(raw.get("isa"), str) else cpu_info().isa
    precision = raw.get("precision") if isinstance(raw.get("precision"), str) else "fp32"
    backend = raw.get("backend") if isinstance(raw.get("backend"), str) else "onnxruntime"
    name = f"{isa}-{precision}"
    return name if backend == "onnxruntime" else f"{backend}-{name}"


class TargetConfig(_Strict):
    """One deployment target: which backend builds and runs the engine, and how it is timed.

    ``profile`` names a target profile (``targets/<name>.yaml``, or a path to one); the profile
    fills every field the recipe leaves out, and its ``budgets`` become this target's ``gate``
    defaults. Fields written in the recipe always win.
    """

    name: str = Field(description="Target name, used for the engine directory and in the report "
                      "(default: the profile's name; without a profile, what it runs on: "
                      "<isa>-<precision> for onnxruntime, e.g. avx2-int8, else "
                      "<backend>-<isa>-<precision>).")
    profile: str | None = Field(None, description="Target profile name or YAML path whose "
                                "settings fill the fields not given here.")
    note: str = Field("", description="Shown next to the target in the report, e.g. that it "
                      "was measured on a stand-in (this CPU) rather than the real device.")
    backend: str = Field("onnxruntime", description="Registered backend name.")
    precision: str = Field("fp32", description="Engine precision (must be supported by the "
                           "backend).")
    quant_preset: str | None = Field(None, description="INT8 preset (ort-x86, ort-x86-vnni, "
                                     "ort-x86-avx2, ort-arm64, tensorrt, tflite) of an int8 "
                                     "target; default: the backend's own (ort-x86 picks the "
                                     "ONNX Runtime form for the target's isa).")
    isa: str | None = Field(None, description="ISA class of the CPU that runs the engine "
                            "(avx2, avx512, avx512-vnni, avx-vnni, arm64, arm64-dotprod, "
                            "arm64-i8mm); null: this machine's, detected. A profile sets it "
                            "from its requires.cpu_flags.")
    threads: int = Field(1, ge=1, description="Intra-op threads for the benchmark.")
    batch_size: int = Field(1, ge=1, description="Batch size of the latency measurement.")
    warmup: int = Field(20, ge=0, description="Untimed warm-up runs.")
    runs: int = Field(200, ge=50, description="Timed runs (>= 50); with max_seconds, the most.")
    max_seconds: float | None = Field(None, gt=0, description="Optional time budget of the timed "
                                      "loop per model: stop once it is spent and min_runs ran.")
    min_runs: int = Field(50, ge=10, description="With max_seconds: timed runs always made.")
    gate: GateConfig = Field(default_factory=GateConfig, description="Thresholds for this target "
                             "only; a value set here overrides the recipe's gate.")

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and not raw.get("profile") and not raw.get("name"):
            return {**raw, "name": _local_target_name(raw)}
        if not isinstance(raw, dict) or not raw.get("profile"):
            return raw
        from edgecompress.targets import load_profile

        try:
            profile = load_profile(str(raw["profile"]))
        except ConfigError as err:
            raise ValueError(str(err)) from None
        return profile.fill_target(raw)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not value or not all(ch.isalnum() or ch in "-_." for ch in value) or value[0] == ".":
            raise ValueError("use letters, digits, '-', '_' and '.' only")
        return value

    @field_validator("isa")
    @classmethod
    def _known_isa(cls, value: str | None) -> str | None:
        from edgecompress.isa import PEAKS

        if value is not None and value not in PEAKS:
            raise ValueError(f"unknown ISA class {value!r}; known: {', '.join(PEAKS)}")
        return value

    @model_validator(mode="after")
    def _budget(self) -> TargetConfig:
        if self.max_seconds is not None and self.min_runs > self.runs:
            raise ValueError(f"min_runs ({self.min_runs}) must be <= runs ({self.runs})")
        return self


class Recipe(_Strict):
    """A whole compression recipe."""

    version: Literal[1] = Field(RECIPE_VERSION, description="Recipe schema version.")
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
