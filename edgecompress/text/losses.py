"""Distillation losses for transformers: logits KD, hidden-state MSE and attention maps.

- logits: ``T^2 KL(softmax(t/T) || softmax(s/T))`` (Hinton), plus ``ce`` x cross-entropy.
- hidden states (TinyBERT): ``MSE(W h_s, h_t)`` per mapped layer over real (unpadded) tokens;
  ``W`` is a learned Linear when the student is narrower, the identity otherwise.
- attention maps (TinyBERT): MSE between the attention probabilities of mapped layers, over
  the real query rows; when head counts differ both are averaged over heads first.

Layer indices follow Hugging Face ``hidden_states``: 0 = embeddings, k = output of layer k.
Attention maps exist for layers 1..L only (``attentions[k - 1]``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.errors import ConfigError


def default_layer_map(kept: list[int]) -> list[tuple[int, int]]:
    """Student layer i+1 -> the teacher layer it was copied from / stands for (1-based)."""
    return [(i + 1, t + 1) for i, t in enumerate(kept)]


def check_layer_map(layer_map: list[tuple[int, int]], student_layers: int,
                    teacher_layers: int) -> None:
    """Raises ConfigError naming ``distill.layer_map`` when an index is out of range."""
    for s, t in layer_map:
        if not (0 <= s <= student_layers and 0 <= t <= teacher_layers):
            raise ConfigError(f"distill.layer_map: [{s}, {t}] out of range (student layers "
                              f"0..{student_layers}, teacher layers 0..{teacher_layers}; "
                              "0 = embeddings)")


class TextDistillLoss(nn.Module):
    """The weighted sum; owns the hidden-state projections (trained with the student)."""

    def __init__(self, *, temperature: float, kd: float, ce: float, hidden: float,
                 attention: float, layer_map: list[tuple[int, int]], student_width: int,
                 teacher_width: int) -> None:
        super().__init__()
        self.t, self.kd, self.ce, self.hidden, self.attention = \
            temperature, kd, ce, hidden, attention
        self.layer_map = list(layer_map)
        # Only a hidden-state term needs projections (an unused parameter would also stall
        # DistributedDataParallel).
        self.proj = nn.ModuleList([
            nn.Linear(student_width, teacher_width)
            if student_width != teacher_width and hidden > 0 else nn.Identity()
            for _ in self.layer_map])

    @property
    def needs_hidden(self) -> bool:
        return self.hidden > 0

    @property
    def needs_attention(self) -> bool:
        return self.attention > 0

    def forward(self, s_out, t_out, labels: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, float]]:
        """``s_out``/``t_out``: HF outputs (logits, optional hidden_states/attentions)."""
        parts: dict[str, torch.Tensor] = {}
        if self.kd > 0:
            log_p = F.log_softmax(s_out.logits / self.t, dim=-1)
            q = F.softmax(t_out.logits.detach() / self.t, dim=-1)
            parts["kd"] = self.kd * self.t ** 2 * F.kl_div(log_p, q, reduction="batchmean")
        if self.ce > 0:
            parts["ce"] = self.ce * F.cross_entropy(s_out.logits, labels)
        tokens = mask.unsqueeze(-1).to(s_out.logits.dtype)
        n_tokens = tokens.sum().clamp_min(1.0)
        if self.hidden > 0:
            total = s_out.logits.new_zeros(())
            for proj, (s, t) in zip(self.proj, self.layer_map, strict=True):
                diff = proj(s_out.hidden_states[s]) - t_out.hidden_states[t].detach()
                total = total + (diff.pow(2) * tokens).sum() / (n_tokens * diff.shape[-1])
            parts["hidden"] = self.hidden * total / len(self.layer_map)
        if self.attention > 0:
            total = s_out.logits.new_zeros(())
            rows = mask[:, None, :, None].to(s_out.logits.dtype)  # real query positions
            pairs = [(s, t) for s, t in self.layer_map if s > 0 and t > 0]
            for s, t in pairs:
                a_s, a_t = s_out.attentions[s - 1], t_out.attentions[t - 1].detach()
                if a_s.shape[1] != a_t.shape[1]:
                    a_s, a_t = a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)
                err = (a_s - a_t).pow(2) * rows
                total = total + err.sum() / (rows.sum() * a_s.shape[1] * a_s.shape[-1])
            parts["attention"] = self.attention * total / max(len(pairs), 1)
        loss = sum(parts.values()) if parts else s_out.logits.sum() * 0.0
        return loss, {k: float(v.detach()) for k, v in parts.items()}
