"""What the text family gives the shared training loop (:func:`edgecompress.training.fit`):
token batches, the forward pass and loss (cross-entropy, or the distillation loss mix), the
validation accuracy, and the usual BERT schedule (AdamW, linear warm-up then linear decay,
gradients clipped to norm 1).

The loop keeps the best validation epoch (a late, worse epoch never wins) and shows a progress
bar on a terminal or a log line at least every ~30 s without one: fine-tuning a real encoder
takes many minutes.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.distributed import DistInfo, all_reduce_mean
from edgecompress.text.data import Encoded, batches
from edgecompress.text.losses import TextDistillLoss
from edgecompress.training import fit

logger = logging.getLogger(__name__)

EVAL_BATCH = 64


def model_device(model: nn.Module) -> torch.device:
    """Where ``model`` lives (its first parameter's device; the CPU for a parameterless one).
    The stages move models to the run's device (``recipe.device``); the loops follow them."""
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def predict(model: nn.Module, data: Encoded, pad_id: int, batch_size: int = EVAL_BATCH
            ) -> np.ndarray:
    """Logits for every text, in order (eval mode, no dropout), as a CPU array."""
    model.eval()
    device, out = model_device(model), []
    for ids, mask, _ in batches(data, batch_size, pad_id):
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        out.append(logits.float().cpu().numpy())
    return np.concatenate(out)


def accuracy(model: nn.Module, data: Encoded, pad_id: int) -> float:
    """Top-1 accuracy (fraction)."""
    return float((predict(model, data, pad_id).argmax(1) == data.labels).mean())


def _schedule(optimizer: torch.optim.Optimizer, total: int, warmup_fraction: float):
    warm = max(1, int(total * warmup_fraction))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class _Step(nn.Module):
    """The student and the loss's learned projections as one module whose forward is the
    training loss, so DistributedDataParallel syncs every trained parameter."""

    def __init__(self, model: nn.Module, loss_fn: TextDistillLoss | None, forward, want) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss_fn
        self._forward, self._want = forward, want

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                t_out: Any = None) -> torch.Tensor:
        s_out = self._forward(self.model, ids, mask, **self._want)
        if self.loss_fn is None:
            return F.cross_entropy(s_out.logits, labels)
        return self.loss_fn(s_out, t_out, labels, mask)[0]


def train(model: nn.Module, train_data: Encoded, val_data: Encoded, cfg: Any, pad_id: int,
          *, seed: int, teacher: nn.Module | None = None, loss_fn: TextDistillLoss | None = None,
          label: str = "train", forward=None, set_mode=None,
          dist_info: DistInfo | None = None) -> dict[str, Any]:
    """Train ``model`` in place through the shared loop (:func:`edgecompress.training.fit`)
    and load its best-validation weights back.

    Without ``teacher`` the loss is cross-entropy on the labels; with it, ``loss_fn``.
    ``forward(model, ids, mask, **kw)`` overrides how the student is called and
    ``set_mode(model, training)`` how it switches train/eval (QAT graphs, which refuse
    ``.train()``). Under torchrun (``dist_info`` distributed) each rank trains on its shard of
    every epoch with DDP, and the validation accuracy is averaged over the ranks.

    Returns:
        ``{"best_epoch", "val_accuracy", "history", "seconds"}``.
    """
    device = model_device(model)
    if loss_fn is not None:
        loss_fn.to(device)  # learned projections live with the student
    if teacher is not None:
        teacher.to(device).eval()
    params = list(model.parameters()) + (list(loss_fn.parameters()) if loss_fn else [])
    optimizer = torch.optim.AdamW([p for p in params if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    dist_info = dist_info or _single_process(device)
    world = dist_info.world_size
    steps_per_epoch = max(1, math.ceil(len(train_data) // world / cfg.batch_size))
    scheduler = _schedule(optimizer, cfg.epochs * steps_per_epoch, cfg.warmup_fraction)
    forward = forward or (lambda m, ids, mask, **kw: m(input_ids=ids, attention_mask=mask, **kw))
    set_mode = set_mode or (lambda m, training: m.train(training))
    want = {}
    if loss_fn is not None:
        want = {"output_hidden_states": loss_fn.needs_hidden,
                "output_attentions": loss_fn.needs_attention}

    step = _Step(model, loss_fn, forward, want)

    def step_loss(module: nn.Module, batch: tuple[torch.Tensor, ...]
                  ) -> tuple[torch.Tensor, int]:
        ids, mask, labels = (t.to(device) for t in batch)
        t_out = None
        if teacher is not None:
            with torch.no_grad():
                t_out = teacher(input_ids=ids, attention_mask=mask, **want)
        return module(ids, mask, labels, t_out), len(labels)

    def evaluate() -> float:
        set_mode(model, False)
        return all_reduce_mean(_val_accuracy(model, val_data, pad_id, forward), device)

    start = time.perf_counter()
    result = fit(model, step, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
                 epoch_batches=lambda epoch: batches(
                     train_data, cfg.batch_size, pad_id, shuffle=True,
                     seed=seed * 1000 + epoch + 1, rank=dist_info.rank, world_size=world),
                 step_loss=step_loss, evaluate=evaluate, optimizer=optimizer,
                 scheduler=scheduler, dist_info=dist_info, desc=f"[{label}]",
                 clip_norm=1.0, set_mode=lambda module, training: set_mode(model, training))
    set_mode(model, False)
    history = [{"epoch": h["epoch"], "loss": round(h["train_loss"], 5),
                "val_accuracy": round(h["val_accuracy"], 5)} for h in result.history]
    return {"best_epoch": max(result.best_epoch, 0), "val_accuracy": result.best_val_accuracy,
            "history": history, "seconds": round(time.perf_counter() - start, 2),
            "world_size": world}


def _single_process(device: torch.device) -> DistInfo:
    return DistInfo(rank=0, world_size=1, local_rank=0, device=device)


@torch.no_grad()
def _val_accuracy(model: nn.Module, data: Encoded, pad_id: int, forward) -> float:
    hits, device = 0, model_device(model)
    for ids, mask, labels in batches(data, EVAL_BATCH, pad_id):
        logits = forward(model, ids.to(device), mask.to(device)).logits
        hits += int((logits.argmax(1).cpu() == labels).sum())
    return hits / max(len(data), 1)
