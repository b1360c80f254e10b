"""The one supervised training loop (:func:`fit`), used by every model family's fine-tuning
and distillation; :func:`train` feeds it images.

It reads a split's images as an array or as a stream (``ImageStream``: decoded per batch in
DataLoader workers, random train transforms applied), shards each epoch's permutation across
ranks when run under torchrun (DDP), so each rank reads only its shard, selects the best epoch
on the validation split (early stopping), and shows a progress bar per epoch on an interactive
terminal only (quiet in CI, on other ranks).
Without a terminal, :class:`ProgressLog` writes a log line at least every
``EDGECOMPRESS_PROGRESS_SECONDS`` (30 s) with step, loss, elapsed time and ETA, so a long epoch
never runs silent in a CI log.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from edgecompress.distributed import DistInfo, all_reduce_mean

logger = logging.getLogger(__name__)

# A loss function gets (trainable module, inputs, labels, sample indices) and returns the loss.
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def progress_enabled() -> bool:
    """Progress bars only on an interactive terminal and never in CI."""
    if os.environ.get("CI") or os.environ.get("EDGECOMPRESS_QUIET"):
        return False
    return sys.stderr.isatty()


#: Input bytes per evaluation batch (predict_logits), whatever the image size.
EVAL_BATCH_BYTES = 32 * 2**20

#: Seconds between progress log lines of a training loop without a terminal.
PROGRESS_SECONDS = 30.0


def progress_interval() -> float:
    """``EDGECOMPRESS_PROGRESS_SECONDS`` when set to a positive number, else 30 s."""
    raw = os.environ.get("EDGECOMPRESS_PROGRESS_SECONDS")
    try:
        value = float(raw) if raw else PROGRESS_SECONDS
    except ValueError:
        logger.warning("EDGECOMPRESS_PROGRESS_SECONDS=%r is not a number; using %g s", raw,
                       PROGRESS_SECONDS)
        return PROGRESS_SECONDS
    return value if value > 0 else PROGRESS_SECONDS


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class ProgressLog:
    """Log lines for a loop of ``total_steps`` steps: one at least every ``interval`` seconds.

    ``step()`` is cheap (one clock read) and logs only when the interval has passed since the
    last line, so the loop body stays fast. The ETA extrapolates the mean time per step so far
    over the steps left (a rough figure, printed as such).

    Args:
        label: What is training (``finetune``, ``[distill]``, ...), first on every line.
        total_steps: Steps of the whole run (all epochs), for the ETA.
        interval: Seconds between lines (default :func:`progress_interval`).
        enabled: False makes every call a no-op (an interactive terminal has a progress bar;
            other ranks stay quiet).
        clock: Monotonic seconds (tests pass a fake one).
    """

    def __init__(self, label: str, total_steps: int, *, interval: float | None = None,
                 enabled: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.total = max(1, int(total_steps))
        self.interval = progress_interval() if interval is None else interval
        self.enabled = enabled
        self.clock = clock
        self.start = clock()
        self.last = self.start
        self.done = 0
        self.lines = 0

    def step(self, epoch: int, epochs: int, loss: float, steps: int = 1) -> None:
        """Count ``steps`` finished steps of ``epoch`` (1-based) and log when it is time."""
        self.done += steps
        if not self.enabled:
            return
        now = self.clock()
        if now - self.last < self.interval:
            return
        self.last = now
        self.lines += 1
        elapsed = now - self.start
        eta = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
        logger.info("%s epoch %d/%d step %d/%d: loss %.4f, elapsed %s, ETA ~%s", self.label,
                    epoch, epochs, self.done, self.total, loss, _duration(elapsed),
                    _duration(eta) if eta == eta else "?")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def iter_batches(x: Any, batches: list[np.ndarray], *, train: bool = False
                 ) -> Iterator[np.ndarray]:
    """float32 images for each array of row positions of ``x``, in order.

    An array is indexed; a stream runs one DataLoader over all the batches (workers decode
    ahead), with its random train transforms when ``train`` is true.
    """
    if hasattr(x, "batches"):
        yield from x.batches(batches, train=train)
        return
    for rows in batches:
        yield x[rows]


def augments(x: Any) -> bool:
    """Whether training batches of ``x`` are randomly transformed (a streamed photo split), so
    the teacher must see each batch rather than precomputed logits of the plain images."""
    return bool(getattr(x, "augments", False))


def slices(n: int, batch_size: int) -> list[np.ndarray]:
    """Consecutive position batches covering ``range(n)``."""
    return [np.arange(i, min(n, i + batch_size)) for i in range(0, n, batch_size)]


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, device: torch.device,
                   batch_size: int = 512) -> np.ndarray:
    """Logits of ``model`` (in eval mode, restored afterwards) on all of ``x``.

    Batches hold at most ``batch_size`` images and about 32 MiB of input, so a 224-px model's
    activations stay a few hundred MB instead of growing with the batch.
    """
    was_training = model.training
    model.eval()
    outs = []
    per_image = max(1, math.prod(x.shape[1:]) * 4)
    batch_size = max(1, min(batch_size, EVAL_BATCH_BYTES // per_image))
    for batch in iter_batches(x, slices(len(x), batch_size)):
        xb = torch.from_numpy(np.ascontiguousarray(batch)).to(device)
        outs.append(model(xb).float().cpu())
    model.train(was_training)
    return torch.cat(outs).numpy() if outs else np.zeros((0, 0), dtype=np.float32)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, device: torch.device) -> float:
    """Top-1 accuracy in [0, 1]."""
    logits = predict_logits(model, x, device)
    return float((logits.argmax(1) == y).mean()) if len(y) else 0.0


@dataclass
class TrainResult:
    """What a training run produced: the best weights and how it got there."""

    best_state: dict[str, torch.Tensor]
    best_val_accuracy: float
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)


def fit(model: nn.Module, trainable: nn.Module, *, epochs: int, steps_per_epoch: int,
        epoch_batches: Callable[[int], Iterable[Any]],
        step_loss: Callable[[nn.Module, Any], tuple[torch.Tensor, int]],
        evaluate: Callable[[], float], optimizer: torch.optim.Optimizer, scheduler: Any,
        dist_info: DistInfo, desc: str, patience: int | None = None,
        clip_norm: float | None = None,
        on_epoch_start: Callable[[int], None] | None = None,
        set_mode: Callable[[nn.Module, bool], Any] | None = None,
        candidate: Callable[[], bool] | None = None, ties_win: bool = False) -> TrainResult:
    """The one training loop of every model family: epochs of optimizer steps, the best epoch
    on validation kept, early stopping, DDP under torchrun, progress bar or progress log lines.

    What differs per family comes in as callables, so images, token batches or anything else
    train through the same code:

    Args:
        model: whose validation score selects the best epoch and whose ``state_dict`` is kept
            (loaded back at the end).
        trainable: the module holding the trained parameters (``model`` plus e.g. learned
            projections); wrapped in DistributedDataParallel when ``dist_info`` is distributed.
        epoch_batches: ``epoch`` (0-based) -> the epoch's batches, about ``steps_per_epoch``
            of them, this rank's share only.
        step_loss: ``(wrapped trainable, batch) -> (loss, samples in the batch)``.
        evaluate: the validation score after an epoch (higher is better; all ranks agree).
        scheduler: stepped after every optimizer step.
        patience: stop after this many epochs without a better score (None: never).
        clip_norm: clip the gradients' global norm to this (None: no clipping).
        on_epoch_start: called with the epoch index before each epoch (layer-wise unfreezing).
        set_mode: ``(module, training)``; default ``module.train(training)`` (a QAT graph
            exported by PT2E refuses ``.train()`` and brings its own).
        candidate: whether the epoch just finished may be kept (QAT: only once its ranges are
            frozen); default every epoch. With no candidate epoch the last weights stay.
        ties_win: a later epoch with an equal score replaces the kept one.
    """
    device = dist_info.device
    set_mode = set_mode or (lambda module, training: module.train(training))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    wrapped: nn.Module = trainable
    best = TrainResult(best_state=copy.deepcopy(model.state_dict()), best_val_accuracy=-1.0,
                       best_epoch=-1, epochs_run=0)
    show = progress_enabled() and dist_info.is_main
    progress = ProgressLog(desc, epochs * steps_per_epoch, enabled=dist_info.is_main and not show)
    bad_epochs = 0
    for epoch in range(epochs):
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        if dist_info.distributed and (epoch == 0 or on_epoch_start is not None):
            # DDP syncs only the parameters that require grad when it is built, so rebuild it
            # whenever on_epoch_start may have unfrozen some (cheap: it broadcasts from rank 0).
            wrapped = nn.parallel.DistributedDataParallel(
                trainable, device_ids=[device.index] if device.type == "cuda" else None)
        set_mode(trainable, True)
        total, count = 0.0, 0
        bar = tqdm(total=steps_per_epoch, desc=f"{desc} {epoch + 1}/{epochs}", leave=False,
                   disable=not show, unit="batch")
        for batch in epoch_batches(epoch):
            bar.update(1)
            loss, n = step_loss(wrapped, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, clip_norm)
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * n
            count += n
            bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
            progress.step(epoch + 1, epochs, total / max(count, 1))
        bar.close()
        train_loss = all_reduce_mean(total / max(count, 1), device)
        val_acc = evaluate()
        best.history.append({"epoch": epoch + 1, "train_loss": train_loss,
                             "val_accuracy": val_acc})
        best.epochs_run = epoch + 1
        if dist_info.is_main:
            logger.info("%s epoch %d/%d: loss %.4f, val acc %.4f", desc, epoch + 1, epochs,
                        train_loss, val_acc)
        if (candidate is None or candidate()) and (
                val_acc > best.best_val_accuracy
                or (ties_win and val_acc == best.best_val_accuracy)):
            best.best_val_accuracy = val_acc
            best.best_epoch = epoch + 1
            best.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            bad_epochs = 0
        else:
            bad_epochs += 1
            if patience is not None and bad_epochs >= patience:
                if dist_info.is_main:
                    logger.info("%s: early stop after epoch %d (best %d, val acc %.4f)", desc,
                                epoch + 1, best.best_epoch, best.best_val_accuracy)
                break
    if best.best_epoch > 0:
        model.load_state_dict(best.best_state)
    return best


def train(model: nn.Module, trainable: nn.Module, loss_fn: LossFn, *,
          x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
          epochs: int, lr: float, weight_decay: float, batch_size: int, patience: int,
          seed: int, dist_info: DistInfo, desc: str,
          on_epoch_start: Callable[[int], None] | None = None,
          augment: bool = True) -> TrainResult:
    """Train ``trainable`` (which contains ``model``) on images with AdamW + one-cycle LR and
    early stopping, through :func:`fit`.

    Args:
        model: the classifier whose validation accuracy selects the best epoch and whose
            ``state_dict`` is returned.
        trainable: the module holding every trained parameter (``model`` plus e.g. feature
            projections); wrapped in DistributedDataParallel when running under torchrun.
        loss_fn: computes the batch loss from the (possibly DDP-wrapped) ``trainable``.
        on_epoch_start: called with the epoch index before each epoch (layer-wise unfreezing).
        augment: apply a streamed split's random train transforms (photo preset). A loss that
            looks up precomputed teacher logits by sample index needs False: the teacher saw
            the untransformed images.
    """
    device = dist_info.device
    trainable.to(device)
    optimizer = torch.optim.AdamW(list(trainable.parameters()), lr=lr,
                                  weight_decay=weight_decay)
    n = len(x_train)
    per_rank = n // dist_info.world_size
    steps_per_epoch = max(1, math.ceil(per_rank / batch_size))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)
    y_all = torch.from_numpy(y_train)

    def epoch_batches(epoch: int) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        # Same permutation on every rank (seeded by epoch), each rank takes its own stride.
        gen = torch.Generator().manual_seed(seed * 1000 + epoch)
        perm = torch.randperm(n, generator=gen)[: per_rank * dist_info.world_size]
        mine = perm[dist_info.rank::dist_info.world_size]
        steps = [mine[s * batch_size:(s + 1) * batch_size] for s in range(steps_per_epoch)]
        steps = [idx for idx in steps if len(idx)]
        images = iter_batches(x_train, [idx.numpy() for idx in steps], train=augment)
        return zip(steps, images, strict=True)

    def step_loss(module: nn.Module, batch: tuple[torch.Tensor, np.ndarray]
                  ) -> tuple[torch.Tensor, int]:
        idx, images = batch
        xb = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        return loss_fn(module, xb, y_all[idx].to(device), idx), len(idx)

    return fit(model, trainable, epochs=epochs, steps_per_epoch=steps_per_epoch,
               epoch_batches=epoch_batches, step_loss=step_loss,
               evaluate=lambda: all_reduce_mean(accuracy(model, x_val, y_val, device), device),
               optimizer=optimizer, scheduler=scheduler, dist_info=dist_info, desc=desc,
               patience=patience, on_epoch_start=on_epoch_start)
