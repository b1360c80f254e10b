"""The recipe's compression sections: ``stages.prune``, ``stages.qat`` and ``stages.export``.
Part of :mod:`edgecompress.recipe`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from edgecompress.config import _Strict

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
