"""Batch augmentations for distillation ("function matching", Beyer et al. 2022).

Teacher and student see the same augmented batch, so the teacher labels points the hard labels
never covered; that is where distillation earns its keep on small datasets. The hard-label
baseline gets the same augmentation (with mixed labels for mixup) so the comparison stays fair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("none", "shift", "mixup", "shift+mixup", "cutmix", "shift+cutmix")


def random_shift(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image by up to ~1/8 of its size (at least 1 px), zero-padded borders."""
    n, _, h, w = x.shape
    pad = max(1, min(h, w) // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :]).to(x.device)  # (n, h)
    cols = (dx[:, None] + torch.arange(w)[None, :]).to(x.device)  # (n, w)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def mixup(x: torch.Tensor, alpha: float = 0.4, generator: torch.Generator | None = None
          ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Blend the batch with a shuffled copy; returns (mixed x, permutation, lambda)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    return lam * x + (1 - lam) * x[perm], perm, lam


def cutmix(x: torch.Tensor, alpha: float = 1.0, generator: torch.Generator | None = None
           ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Paste a random box of a shuffled copy into each image (Yun et al. 2019); returns (mixed
    x, permutation, lambda = the fraction of each image left unchanged).

    Written here rather than taken from torchvision's ``v2.CutMix`` because that one mixes
    one-hot labels, while distillation needs the permutation and lambda: the teacher labels the
    mixed batch afresh and the hard-label term is weighted by lambda.
    """
    n, _, h, w = x.shape
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(n, generator=generator).to(x.device)
    cut_h, cut_w = int(round(h * (1 - lam) ** 0.5)), int(round(w * (1 - lam) ** 0.5))
    cy = int(torch.randint(0, h, (1,), generator=generator))
    cx = int(torch.randint(0, w, (1,), generator=generator))
    top, bottom = max(0, cy - cut_h // 2), min(h, cy + (cut_h + 1) // 2)
    left, right = max(0, cx - cut_w // 2), min(w, cx + (cut_w + 1) // 2)
    out = x.clone()
    out[:, :, top:bottom, left:right] = x[perm, :, top:bottom, left:right]
    lam = 1.0 - (bottom - top) * (right - left) / float(h * w)
    return out, perm, lam
