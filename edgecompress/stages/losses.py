"""Distillation losses (Hinton et al. 2015; FitNets-style feature matching)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.errors import ConfigError


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


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                      labels: torch.Tensor, *, alpha: float, temperature: float) -> torch.Tensor:
    """alpha * T^2 * KL + (1 - alpha) * CE(labels); alpha 0 (or no teacher) is plain CE."""
    hard = F.cross_entropy(student_logits, labels)
    if teacher_logits is None or alpha == 0:
        return hard
    return alpha * kd_loss(student_logits, teacher_logits, temperature) + (1 - alpha) * hard


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
    if student_feat.dim() == 2 and teacher_feat.dim() == 2:
        return nn.Linear(student_feat.shape[1], teacher_feat.shape[1], bias=False)
    raise ConfigError(f"stages.distill.features: cannot match a student feature of shape "
                      f"{tuple(student_feat.shape)} to a teacher feature of shape "
                      f"{tuple(teacher_feat.shape)} (both must be NCHW maps or both vectors)")


def feature_mse(projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE after resizing the student map to the teacher's spatial size when they differ."""
    if projected.dim() == 4 and projected.shape[-2:] != target.shape[-2:]:
        projected = F.adaptive_avg_pool2d(projected, target.shape[-2:])
    return F.mse_loss(projected, target)
