"""Acceptance of an int8 engine file against the PyTorch int8 model it was exported from.

Int8 engines (ORT's fused QLinearConv/QGemm, XNNPACK, TensorRT) do not round like PyTorch's
reference kernels, and on a deep network one int8 step of difference early on grows into
logit differences far larger than "a few percent of the largest logit" without changing what
the model decides. So the criteria are what matters to a user, on the evaluation split:

* top-1 agreement with the PyTorch int8 model >= ``min_top1_agreement``, counted on the
  *decisive* samples: those whose reference top-1 leads the runner-up by more than
  :data:`TIE_FRACTION` of the largest |logit| (about three int8 steps of the output). A flip
  inside that margin is a near-tie that any rounding difference decides; an under-trained or
  collapsed model (near-constant logits) has nothing but near-ties, and its raw agreement says
  nothing about the export (EfficientNet-B0 after a short run: raw agreement 0.705 with a max
  logit difference of 0.012). The raw agreement and the near-tie count are reported too;
* the task metric (accuracy) of the engine within ``max_metric_diff_pp`` percentage points of
  the PyTorch int8 model's;
* optionally (``rtol`` set) max |logit diff| <= ``rtol`` x max |logit|.

Every number is returned (and written to the report) whether it is a criterion or not.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgecompress.export.onnx import compare_logits

#: Reference top-1 margins below this fraction of max |logit| are near-ties (see module doc).
TIE_FRACTION = 0.02
#: Recipe keys that relax the check, named in every failure message.
RELAX_KEYS = ("stages.qat.min_top1_agreement", "stages.qat.max_metric_diff_pp")


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits.reshape(len(logits), -1), axis=1) == y))


def judge_int8_parity(reference: Any, candidate: Any, y: Any | None, *, min_top1_agreement: float,
                      max_metric_diff_pp: float | None,
                      rtol: float | None = None) -> tuple[dict[str, Any], list[str]]:
    """Compare engine logits with the PyTorch int8 logits on the same samples.

    Args:
        reference: PyTorch int8 logits ``(samples, classes)``.
        candidate: The engine's logits on the same samples.
        y: Labels of the samples (None: the metric criterion is not checked).
        min_top1_agreement: Minimum fraction of samples with the same top-1 class.
        max_metric_diff_pp: Max |accuracy difference| in percentage points (None: not checked).
        rtol: Max abs logit difference relative to max |reference logit| (None: not checked).

    Returns:
        The parity record (``top1_agreement``, ``max_abs_diff``, ``mean_abs_diff``, ``samples``,
        ``accuracy``, ``reference_accuracy``, ``metric_diff_pp``, ``criteria``) and the list of
        violated criteria, each a sentence with its numbers (empty when the engine passes).

    Raises:
        ParityError: Shapes differ or there is nothing to compare.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    result = compare_logits(ref, cand)
    record: dict[str, Any] = result.to_dict()
    failures: list[str] = []
    agreement, ties = decisive_agreement(ref, cand)
    record.update(top1_agreement_decisive=agreement, near_ties=ties)
    if not agreement >= min_top1_agreement:
        failures.append(f"top-1 agreement {agreement:.4f} < {min_top1_agreement} on the "
                        f"{result.samples - ties} decisive samples "
                        f"(stages.qat.min_top1_agreement)")
    record.update(accuracy=None, reference_accuracy=None, metric_diff_pp=None)
    if y is not None:
        labels = np.asarray(y).reshape(-1)
        acc, ref_acc = _accuracy(cand, labels), _accuracy(ref, labels)
        diff = round(100.0 * (acc - ref_acc), 4)
        record.update(accuracy=acc, reference_accuracy=ref_acc, metric_diff_pp=diff)
        if max_metric_diff_pp is not None and not abs(diff) <= max_metric_diff_pp:
            failures.append(f"accuracy {acc:.4f} vs PyTorch int8 {ref_acc:.4f}: {diff:+.2f} pp, "
                            f"allowed +-{max_metric_diff_pp} pp (stages.qat.max_metric_diff_pp)")
    limit = None
    if rtol is not None:
        limit = rtol * float(np.max(np.abs(ref)))
        if not result.max_abs_diff <= limit:
            failures.append(f"max abs logit diff {result.max_abs_diff:.3g} > {limit:.3g} = "
                            f"{rtol} x max |logit| (stages.qat.rtol; null turns it off)")
    record["criteria"] = {"min_top1_agreement": min_top1_agreement,
                          "max_metric_diff_pp": max_metric_diff_pp if y is not None else None,
                          "rtol": rtol, "max_abs_diff_allowed": limit}
    return record, failures


def decisive_agreement(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, int]:
    """Top-1 agreement on samples that are not near-ties, and how many near-ties there were.

    Returns agreement 1.0 when every sample is a near-tie (nothing decisive to disagree on).
    """
    ref = reference.reshape(len(reference), -1)
    cand = candidate.reshape(len(candidate), -1)
    if ref.shape[1] < 2:
        return float(np.mean(np.sign(ref[:, 0]) == np.sign(cand[:, 0]))), 0
    top2 = np.sort(ref, axis=1)[:, -2:]
    tolerance = TIE_FRACTION * float(np.max(np.abs(ref)))
    decisive = (top2[:, 1] - top2[:, 0]) > tolerance
    if not decisive.any():
        return 1.0, int(len(ref))
    agree = np.argmax(ref, axis=1) == np.argmax(cand, axis=1)
    return float(np.mean(agree[decisive])), int(np.sum(~decisive))


def parity_message(what: str, record: dict[str, Any], failures: list[str],
                   layer: str | None) -> str:
    """The ParityError text: every violated criterion, both main numbers, the first diverging
    layer (or why none is named), and the recipe keys that relax the check."""
    acc = record.get("accuracy")
    metric = (f"accuracy {acc:.4f} vs PyTorch int8 {record['reference_accuracy']:.4f} "
              f"({record['metric_diff_pp']:+.2f} pp)" if acc is not None else "no labels")
    lines = [f"{what} differs from the PyTorch int8 model on {record['samples']} evaluation "
             f"samples: " + "; ".join(failures),
             f"measured: top-1 agreement {record['top1_agreement']:.4f} (all samples; "
             f"{record.get('near_ties', 0)} near-ties), {metric}, max abs "
             f"logit diff {record['max_abs_diff']:.3g} (reported only unless stages.qat.rtol "
             f"is set)",
             layer or "first diverging layer: unknown",
             "if this difference is acceptable, relax " + " or ".join(RELAX_KEYS)
             + "; or keep the diverging layer in FP32 (stages.qat.keep_fp32)"]
    return "\n  ".join(lines)
