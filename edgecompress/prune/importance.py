"""Channel importance criteria, mapped from recipe names to torch-pruning estimators.

Every estimator uses torch-pruning's group reduction (a channel's score is the mean over every
layer the channel touches) and its ``mean`` normaliser, so scores of different groups are on a
common scale (mean 1 per group); the budget planner relies on that to compare groups.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import ModuleType

import numpy as np
import torch
from torch import nn

from edgecompress.errors import BackendUnavailable, ConfigError
from edgecompress.recipe import PRUNE_IMPORTANCES

logger = logging.getLogger(__name__)

# (model output, labels, sample indices) -> loss whose gradient the Taylor criterion uses.
GradLossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def require_torch_pruning() -> ModuleType:
    """Import ``torch_pruning``, naming the extra that installs it when it is missing."""
    try:
        import torch_pruning
    except ImportError as exc:
        raise BackendUnavailable(f"the prune stage needs torch-pruning ({exc}); install it with: "
                                 "pip install 'edgecompress[prune]'") from exc
    return torch_pruning


def make_importance(name: str):
    """The torch-pruning estimator for a recipe's ``importance`` name.

    Raises:
        ConfigError: ``name`` is not one of :data:`~edgecompress.recipe.PRUNE_IMPORTANCES`.
    """
    tp = require_torch_pruning()
    if name == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if name == "fpgm":
        return tp.importance.FPGMImportance(p=2)
    if name == "taylor":
        return tp.importance.TaylorImportance()
    raise ConfigError(f"stages.prune.importance: unknown criterion {name!r}; choose one of "
                      f"{', '.join(PRUNE_IMPORTANCES)}")


def needs_gradients(name: str) -> bool:
    """Whether the criterion reads ``weight.grad`` (first-order Taylor does)."""
    return name == "taylor"


def accumulate_gradients(model: nn.Module, loss_fn: GradLossFn, x: np.ndarray, y: np.ndarray, *,
                         batches: int, batch_size: int, seed: int) -> int:
    """Fill ``.grad`` of every parameter with the loss gradient summed over a few train batches.

    The model runs in eval mode, so BatchNorm running statistics are not disturbed by this
    scoring pass. The batches come from a seeded permutation, so every torchrun rank computes
    the same gradients and therefore prunes the same channels.

    Returns:
        The number of samples used.
    """
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=gen)[: batches * batch_size]
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            xb = torch.from_numpy(x[idx.numpy()])
            yb = torch.from_numpy(y[idx.numpy()])
            loss_fn(model(xb), yb, idx).backward()
    finally:
        model.train(was_training)
    logger.debug("taylor: gradients accumulated over %d samples", len(order))
    return len(order)
