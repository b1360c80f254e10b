"""Training loops of the text path: fine-tuning (hard labels) and distillation (any loss mix).

AdamW with linear warm-up then linear decay (the usual BERT schedule); after each epoch the
validation accuracy decides which weights are kept, so a late, worse epoch never wins. Without a
terminal a log line comes at least every ~30 s (step, loss, elapsed, ETA; see
:class:`edgecompress.training.ProgressLog`): fine-tuning a real encoder takes many minutes.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.text.data import Encoded, batches
from edgecompress.text.losses import TextDistillLoss
from edgecompress.training import ProgressLog

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


def train(model: nn.Module, train_data: Encoded, val_data: Encoded, cfg: Any, pad_id: int,
          *, seed: int, teacher: nn.Module | None = None, loss_fn: TextDistillLoss | None = None,
          label: str = "train", forward=None, set_mode=None) -> dict[str, Any]:
    """Train ``model`` in place and load its best-validation weights back.

    Without ``teacher`` the loss is cross-entropy on the labels; with it, ``loss_fn``.
    ``forward(model, ids, mask, **kw)`` overrides how the student is called and
    ``set_mode(model, training)`` how it switches train/eval (QAT graphs, which refuse
    ``.train()``).

    Returns:
        ``{"best_epoch", "val_accuracy", "history", "seconds"}``.
    """
    device = model_device(model)
    if loss_fn is not None:
        loss_fn.to(device)  # learned projections live with the student
    if teacher is not None:
        teacher.to(device)
    params = list(model.parameters()) + (list(loss_fn.parameters()) if loss_fn else [])
    optimizer = torch.optim.AdamW([p for p in params if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    steps = max(1, cfg.epochs * math.ceil(len(train_data) / cfg.batch_size))
    scheduler = _schedule(optimizer, steps, cfg.warmup_fraction)
    forward = forward or (lambda m, ids, mask, **kw: m(input_ids=ids, attention_mask=mask, **kw))
    set_mode = set_mode or (lambda m, training: m.train(training))
    want = {}
    if loss_fn is not None:
        want = {"output_hidden_states": loss_fn.needs_hidden,
                "output_attentions": loss_fn.needs_attention}
    best_acc, best_state, best_epoch, history = -1.0, None, 0, []
    start = time.perf_counter()
    progress = ProgressLog(f"[{label}]", steps)
    if teacher is not None:
        teacher.eval()
    for epoch in range(1, cfg.epochs + 1):
        set_mode(model, True)
        total, n = 0.0, 0
        for ids, mask, labels in batches(train_data, cfg.batch_size, pad_id, shuffle=True,
                                         seed=seed * 1000 + epoch):
            ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
            s_out = forward(model, ids, mask, **want)
            if teacher is None:
                loss = F.cross_entropy(s_out.logits, labels)
            else:
                with torch.no_grad():
                    t_out = teacher(input_ids=ids, attention_mask=mask, **want)
                loss, _ = loss_fn(s_out, t_out, labels, mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            total, n = total + float(loss.detach()) * len(labels), n + len(labels)
            progress.step(epoch, cfg.epochs, total / max(n, 1))
        set_mode(model, False)
        val_acc = _val_accuracy(model, val_data, pad_id, forward)
        history.append({"epoch": epoch, "loss": round(total / max(n, 1), 5),
                        "val_accuracy": round(val_acc, 5)})
        logger.info("[%s] epoch %d/%d loss %.4f val acc %.4f", label, epoch, cfg.epochs,
                    total / max(n, 1), val_acc)
        if val_acc > best_acc:
            best_acc, best_epoch = val_acc, epoch
            best_state = copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    set_mode(model, False)
    return {"best_epoch": best_epoch, "val_accuracy": best_acc, "history": history,
            "seconds": round(time.perf_counter() - start, 2)}


@torch.no_grad()
def _val_accuracy(model: nn.Module, data: Encoded, pad_id: int, forward) -> float:
    hits, device = 0, model_device(model)
    for ids, mask, labels in batches(data, EVAL_BATCH, pad_id):
        logits = forward(model, ids.to(device), mask.to(device)).logits
        hits += int((logits.argmax(1).cpu() == labels).sum())
    return hits / max(len(data), 1)
