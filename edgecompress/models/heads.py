"""Classifier-head replacement and backbone parameter groups for fine-tuning.

A pretrained teacher usually has a head sized for another dataset; fine-tuning swaps that
``nn.Linear`` for a fresh one and unfreezes the backbone gradually from the top, one top-level
child at a time, which is why the backbone is grouped by top-level child.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from edgecompress.errors import ModelError

logger = logging.getLogger(__name__)


def _is_linear(module: nn.Module) -> bool:
    """True for ``nn.Linear``, including scripted ones (which are not instances of it)."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, torch.jit.ScriptModule) and (
        getattr(module, "original_name", None) == "Linear")


def _linear_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if name and _is_linear(module)]


def _get(model: nn.Module, name: str) -> nn.Module:
    """``get_submodule`` with a ModelError that lists the Linear layers that do exist."""
    try:
        return model.get_submodule(name)
    except AttributeError as exc:
        candidates = _linear_names(model)[-5:]
        hint = f"; nn.Linear layers in the model: {', '.join(candidates)}" if candidates else ""
        raise ModelError(f"head {name!r} not found in the {type(model).__name__} model"
                         f"{hint}") from exc


def find_head(model: nn.Module, head: str | None = None) -> str:
    """Return the dotted name of the classifier head.

    Args:
        model: The model to inspect.
        head: Explicit dotted name (checked to exist); by default the last ``nn.Linear`` in
            ``model.named_modules()``, which is the classifier in almost every CNN.

    Raises:
        ModelError: If ``head`` does not exist, or no ``nn.Linear`` is found.
    """
    if head is not None:
        if not head:
            raise ModelError("head name must not be empty")
        _get(model, head)
        return head
    names = _linear_names(model) or [  # SqueezeNet-style heads: a 1x1 conv as the classifier
        name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)][-1:]
    if not names:
        raise ModelError(f"no nn.Linear classifier head found in the {type(model).__name__} "
                         "model (models loaded with kind 'export' have none you can edit); "
                         "name the head explicitly or use a factory model")
    return names[-1]


def replace_head(model: nn.Module, num_classes: int, head: str | None = None) -> str:
    """Replace the head with a fresh ``nn.Linear(in_features, num_classes)`` if its size differs.

    Args:
        model: Model edited in place.
        num_classes: Output size wanted.
        head: Dotted name of the head; see :func:`find_head` for the default.

    Returns:
        The head's dotted name.

    Raises:
        ModelError: For TorchScript models (cannot be edited), or when the head is missing or
            is not an ``nn.Linear``.
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise ModelError("a TorchScript model's head cannot be replaced; save a state dict and "
                         "load the model with kind 'factory' plus 'weights' instead")
    name = find_head(model, head)
    old = model.get_submodule(name)
    if isinstance(old, nn.Conv2d) and old.out_channels == num_classes:
        logger.info("head %s (a 1x1 conv) already has %d outputs; kept", name, num_classes)
        return name
    if not isinstance(old, nn.Linear):
        raise ModelError(f"head {name!r} is a {type(old).__name__}, expected nn.Linear")
    if old.out_features == num_classes:
        logger.info("head %s already has %d outputs; kept", name, num_classes)
        return name
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None,
                    device=old.weight.device, dtype=old.weight.dtype)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
    logger.info("replaced head %s: %d -> %d outputs", name, old.out_features, num_classes)
    return name


def backbone_groups(model: nn.Module, head: str) -> list[list[nn.Parameter]]:
    """Group backbone parameters by top-level child, in definition order, without the head.

    Parameters registered directly on ``model`` (e.g. a class token) come first. Empty groups
    are dropped and shared parameters appear once. Unfreeze from the last group backwards.

    Raises:
        ModelError: If ``head`` does not exist.
    """
    head_ids = {id(p) for p in _get(model, head).parameters()}
    seen: set[int] = set(head_ids)
    groups: list[list[nn.Parameter]] = []

    def take(params: list[nn.Parameter]) -> None:
        group = []
        for param in params:
            if id(param) not in seen:
                seen.add(id(param))
                group.append(param)
        if group:
            groups.append(group)

    take(list(model.parameters(recurse=False)))
    for _, child in model.named_children():
        take(list(child.parameters()))
    return groups
