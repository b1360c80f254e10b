"""Distillation losses: Hinton et al. 2015 (KD), Decoupled KD (Zhao et al. 2022), DIST (Huang
et al. 2022), and FitNets-style feature matching.

Every logit loss here is a *soft* term; :func:`distillation_loss` mixes it with the hard-label
cross-entropy as ``alpha * soft + (1 - alpha) * CE``, so ``alpha`` means the same for each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.errors import ConfigError

#: Logit losses selectable by ``stages.distill.loss``.
LOSSES = ("kd", "dkd", "dist")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """Soft-target loss: T^2 * KL(p_teacher || p_student) at temperature T, batch mean.

    The T^2 factor keeps the gradient scale independent of T, so ``alpha`` means the same at any
    temperature.
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits / t, dim=1)
    p_teacher = F.softmax(teacher_logits / t, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * (t * t)


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
             temperature: float, *, tckd_weight: float = 1.0,
             nckd_weight: float = 8.0) -> torch.Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022): KD split into its target-class part (TCKD: the
    binary target vs rest distribution) and its non-target part (NCKD: the distribution over the
    other classes), reweighted. Classical KD is ``TCKD + (1 - p_t^target) * NCKD``; the NCKD
    weight that high-confidence teachers suppress is made a free constant (8 in the paper).

    Both terms are KL divergences at temperature T scaled by T^2, batch means.
    """
    t = temperature
    gt = F.one_hot(labels, student_logits.shape[1]).to(student_logits.dtype)
    p_s = F.softmax(student_logits / t, dim=1)
    p_t = F.softmax(teacher_logits / t, dim=1)
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * (1 - gt)).sum(1)], dim=1).clamp_min(1e-12)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * (1 - gt)).sum(1)], dim=1)
    tckd = F.kl_div(b_s.log(), b_t, reduction="batchmean") * (t * t)
    # Non-target distributions: softmax over the other classes (target pushed to -inf).
    masked_s = student_logits / t - 1000.0 * gt
    masked_t = teacher_logits / t - 1000.0 * gt
    nckd = F.kl_div(F.log_softmax(masked_s, dim=1), F.softmax(masked_t, dim=1),
                    reduction="batchmean") * (t * t)
    return tckd_weight * tckd + nckd_weight * nckd


def _pearson(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
              *, inter_weight: float = 1.0, intra_weight: float = 1.0) -> torch.Tensor:
    """DIST (Huang et al., NeurIPS 2022): match the teacher's *relations* instead of its exact
    probabilities, which tolerates the capacity gap of a small student.

    Inter-class: 1 - mean over samples of the Pearson correlation between the student's and the
    teacher's softened class distributions. Intra-class: the same over each class's column of
    the batch. Both scaled by T^2 (the reference implementation's form).
    """
    t = temperature
    p_s = F.softmax(student_logits / t, dim=1)
    p_t = F.softmax(teacher_logits / t, dim=1)
    inter = 1 - _pearson(p_s, p_t).mean()
    intra = 1 - _pearson(p_s.T, p_t.T).mean()
    return (t * t) * (inter_weight * inter + intra_weight * intra)


def soft_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
              *, loss: str, temperature: float, dkd_beta: float = 8.0) -> torch.Tensor:
    """The soft (teacher) term of ``loss`` (one of :data:`LOSSES`)."""
    if loss == "kd":
        return kd_loss(student_logits, teacher_logits, temperature)
    if loss == "dkd":
        return dkd_loss(student_logits, teacher_logits, labels, temperature, nckd_weight=dkd_beta)
    if loss == "dist":
        return dist_loss(student_logits, teacher_logits, temperature)
    raise ConfigError(f"unknown distillation loss {loss!r}; known: {', '.join(LOSSES)}")


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                      labels: torch.Tensor, *, alpha: float, temperature: float,
                      loss: str = "kd", dkd_beta: float = 8.0) -> torch.Tensor:
    """alpha * soft + (1 - alpha) * CE(labels); alpha 0 (or no teacher) is plain CE.

    ``soft`` is Hinton's T^2 * KL by default, or DKD / DIST (see :func:`soft_loss`).
    """
    hard = F.cross_entropy(student_logits, labels)
    if teacher_logits is None or alpha == 0:
        return hard
    soft = soft_loss(student_logits, teacher_logits, labels, loss=loss, temperature=temperature,
                     dkd_beta=dkd_beta)
    return alpha * soft + (1 - alpha) * hard


def _get_module(model: nn.Module, name: str, role: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        known = [n for n, _ in model.named_modules() if n][:40]
        raise ConfigError(f"stages.distill.features: {role} has no layer '{name}'; "
                          f"layers include: {', '.join(known)}") from None


class FeatureTaps:
    """Forward hooks that keep the latest output of named layers."""

    def __init__(self, model: nn.Module, names: list[str], role: str) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = []
        for name in names:
            module = _get_module(model, name, role)
            self._handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            self.outputs[name] = output
        return hook

    def remove(self) -> None:
        """Detach the hooks (so exported models carry none)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def make_projection(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> nn.Module:
    """Learned map from a student feature to the teacher's width: 1x1 conv (maps) or linear."""
    if student_feat.dim() == 4 and teacher_feat.dim() == 4:
        return nn.Conv2d(student_feat.shape[1], teacher_feat.shape[1], kernel_size=1, bias=False)
    if student_feat.dim() == teacher_feat.dim() in (2, 3):  # vectors, (N, L, D) sequences
        return nn.Linear(student_feat.shape[-1], teacher_feat.shape[-1], bias=False)
    raise ConfigError(f"stages.distill.features: cannot match a student feature of shape "
                      f"{tuple(student_feat.shape)} to a teacher feature of shape "
                      f"{tuple(teacher_feat.shape)} (both must be NCHW maps, vectors or sequences)")


def feature_mse(projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE after resizing the student map to the teacher's spatial size when they differ."""
    if projected.dim() == 4 and projected.shape[-2:] != target.shape[-2:]:
        projected = F.adaptive_avg_pool2d(projected, target.shape[-2:])
    return F.mse_loss(projected, target)
