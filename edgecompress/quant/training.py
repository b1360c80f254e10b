"""Running a prepared (PT2E) model: QAT fine-tuning with distillation, PTQ calibration, eval.

A prepared model is a ``torch.fx.GraphModule`` whose ``.train()``/``.eval()`` are disabled by
torchao (they would not switch BatchNorm/dropout in the graph); modes are changed with
``move_exported_model_to_train``/``_eval`` instead. Observers/fake-quant modules also record
ranges whenever they see data, so they are switched off while evaluating: validation data must
never move the quantization ranges.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)


def _pt2e() -> Any:
    import torchao.quantization.pt2e as pt2e

    return pt2e


@torch.no_grad()
def predict(module: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of a prepared or converted model on ``x`` (eval mode, observers untouched).

    Observers are disabled for the pass and re-enabled afterwards only if they were on.
    """
    pt2e = _pt2e()
    observing = _observers_enabled(module)
    module.apply(pt2e.disable_observer)
    pt2e.move_exported_model_to_eval(module)
    outs = [module(torch.from_numpy(x[i:i + batch_size])).float()
            for i in range(0, len(x), batch_size)]
    if observing:
        module.apply(pt2e.enable_observer)
    return torch.cat(outs).numpy()


def accuracy_of(module: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy in [0, 1] of a prepared/converted model."""
    return float((predict(module, x).argmax(1) == y).mean()) if len(y) else 0.0


def _observers_enabled(module: nn.Module) -> bool:
    flags = [m.observer_enabled for m in module.modules() if hasattr(m, "observer_enabled")]
    return bool(flags) and bool(flags[0])


@torch.no_grad()
def calibrate(prepared: nn.Module, x: np.ndarray, batch_size: int = 64) -> None:
    """PTQ: run the calibration set through the observers (eval mode)."""
    _pt2e().move_exported_model_to_eval(prepared)
    for i in range(0, len(x), batch_size):
        prepared(torch.from_numpy(x[i:i + batch_size]))


@dataclass
class QatResult:
    """What QAT did: per-epoch validation accuracy and when ranges/BN were frozen."""

    best_val_accuracy: float
    best_epoch: int
    steps: int
    observers_frozen_at: int | None
    bn_frozen_at: int | None
    history: list[dict[str, float]] = field(default_factory=list)


def qat_finetune(prepared: nn.Module, *, x_train: np.ndarray, y_train: np.ndarray,
                 teacher_logits: torch.Tensor | None, x_val: np.ndarray, y_val: np.ndarray,
                 epochs: int, lr: float, weight_decay: float, batch_size: int,
                 temperature: float, alpha: float, freeze_observers_after: int | None,
                 freeze_bn_after: int | None, seed: int, desc: str = "qat") -> QatResult:
    """Fine-tune ``prepared`` with fake quantization, distilling from ``teacher_logits``.

    Ranges are learned by moving-average observers during the first part of training and then
    frozen; BatchNorm statistics are frozen after that (the model then trains in eval mode, i.e.
    BN uses its running statistics), which is what makes the last QAT steps see the same numerics
    as the converted model. The best validation epoch (after freezing) is kept.
    """
    from edgecompress.stages.losses import distillation_loss
    from edgecompress.training import progress_enabled

    pt2e = _pt2e()
    n = len(x_train)
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    total = epochs * steps_per_epoch
    freeze_obs = total // 2 if freeze_observers_after is None else freeze_observers_after
    freeze_bn = (2 * total) // 3 if freeze_bn_after is None else freeze_bn_after
    params = [p for p in prepared.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total))
    gen = torch.Generator().manual_seed(seed)
    from edgecompress.training import iter_batches

    yt = torch.from_numpy(y_train).long()
    step, obs_at, bn_at = 0, None, None
    best = (-1.0, -1, copy.deepcopy(prepared.state_dict()))
    history = []
    bar = None
    if progress_enabled():
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit="step", leave=False)
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        # No random train transforms: the teacher's logits were computed on the plain images.
        images = iter_batches(x_train, [order[i:i + batch_size].numpy()
                                        for i in range(0, n, batch_size)])
        for start, batch in zip(range(0, n, batch_size), images, strict=True):
            if obs_at is None and step >= freeze_obs:
                prepared.apply(pt2e.disable_observer)
                obs_at = step
            if bn_at is None and step >= freeze_bn:
                bn_at = step
            # Train mode until BN is frozen; afterwards eval mode (running statistics).
            (pt2e.move_exported_model_to_eval if bn_at is not None
             else pt2e.move_exported_model_to_train)(prepared)
            idx = order[start:start + batch_size]
            logits = prepared(torch.from_numpy(np.ascontiguousarray(batch)))
            loss = distillation_loss(logits, None if teacher_logits is None
                                     else teacher_logits[idx], yt[idx], alpha=alpha,
                                     temperature=temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
        val = accuracy_of(prepared, x_val, y_val)
        history.append({"epoch": epoch + 1, "val_accuracy": val, "loss": float(loss.item())})
        logger.info("%s epoch %d/%d: val accuracy %.4f", desc, epoch + 1, epochs, val)
        # Only epochs that ended with frozen ranges are candidates: earlier states would be
        # converted with ranges that were still moving.
        if obs_at is not None and val >= best[0]:
            best = (val, epoch + 1, copy.deepcopy(prepared.state_dict()))
    if bar is not None:
        bar.close()
    if best[1] > 0:
        prepared.load_state_dict(best[2])
    pt2e.move_exported_model_to_eval(prepared)
    return QatResult(best_val_accuracy=best[0], best_epoch=best[1], steps=step,
                     observers_frozen_at=obs_at, bn_frozen_at=bn_at, history=history)
