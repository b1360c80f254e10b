"""Running a prepared (PT2E) model: QAT fine-tuning with distillation, PTQ calibration, eval.

A prepared model is a ``torch.fx.GraphModule`` whose ``.train()``/``.eval()`` are disabled by
torchao (they would not switch BatchNorm/dropout in the graph); modes are changed with
``move_exported_model_to_train``/``_eval`` instead. Observers/fake-quant modules also record
ranges whenever they see data, so they are switched off while evaluating: validation data must
never move the quantization ranges.
"""

from __future__ import annotations

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
    from edgecompress.distributed import DistInfo
    from edgecompress.stages.losses import distillation_loss
    from edgecompress.training import fit, iter_batches

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
    yt = torch.from_numpy(y_train).long()
    state: dict[str, int | None] = {"step": 0, "obs_at": None, "bn_at": None}

    def epoch_batches(_epoch: int):
        order = torch.randperm(n, generator=gen)
        # No random train transforms: the teacher's logits were computed on the plain images.
        images = iter_batches(x_train, [order[i:i + batch_size].numpy()
                                        for i in range(0, n, batch_size)])
        return ((order[start:start + batch_size], batch)
                for start, batch in zip(range(0, n, batch_size), images, strict=True))

    def step_loss(module: nn.Module, batch: tuple[torch.Tensor, np.ndarray]
                  ) -> tuple[torch.Tensor, int]:
        idx, images = batch
        if state["obs_at"] is None and state["step"] >= freeze_obs:
            module.apply(pt2e.disable_observer)
            state["obs_at"] = state["step"]
        if state["bn_at"] is None and state["step"] >= freeze_bn:
            state["bn_at"] = state["step"]
        # Train mode until BN is frozen; afterwards eval mode (running statistics).
        (pt2e.move_exported_model_to_eval if state["bn_at"] is not None
         else pt2e.move_exported_model_to_train)(module)
        state["step"] += 1
        logits = module(torch.from_numpy(np.ascontiguousarray(images)))
        loss = distillation_loss(logits, None if teacher_logits is None else teacher_logits[idx],
                                 yt[idx], alpha=alpha, temperature=temperature)
        return loss, len(idx)

    # Only epochs that ended with frozen ranges are candidates: earlier states would be
    # converted with ranges that were still moving.
    result = fit(prepared, prepared, epochs=epochs, steps_per_epoch=steps_per_epoch,
                 epoch_batches=epoch_batches, step_loss=step_loss,
                 evaluate=lambda: accuracy_of(prepared, x_val, y_val), optimizer=optimizer,
                 scheduler=schedule, desc=desc,
                 dist_info=DistInfo(rank=0, world_size=1, local_rank=0,
                                    device=torch.device("cpu")),
                 set_mode=lambda module, training: None,  # step_loss switches per step
                 candidate=lambda: state["obs_at"] is not None, ties_win=True)
    pt2e.move_exported_model_to_eval(prepared)
    history = [{"epoch": h["epoch"], "val_accuracy": h["val_accuracy"], "loss": h["train_loss"]}
               for h in result.history]
    return QatResult(best_val_accuracy=result.best_val_accuracy, best_epoch=result.best_epoch,
                     steps=int(state["step"]), observers_frozen_at=state["obs_at"],
                     bn_frozen_at=state["bn_at"], history=history)
