"""Parameter, MAC and size counting for the report and the pruning targets.

MACs are counted with forward hooks on convolution and linear layers, which is exact for the
CNNs this tool targets and needs no extra dependency. Models whose layers cannot be hooked
(TorchScript, ``torch.export`` modules) fall back to PyTorch's own FLOP counter.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgecompress.errors import ModelError
from edgecompress.models.loading import set_mode

logger = logging.getLogger(__name__)

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def model_size_bytes(model: nn.Module) -> int:
    """Bytes held by parameters and buffers, i.e. the in-memory size of the weights."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def _conv_macs(module: nn.Module, out: torch.Tensor) -> int:
    """Each output element costs ``(in_channels / groups) * prod(kernel)`` MACs."""
    per_output = (module.in_channels // module.groups) * math.prod(module.kernel_size)
    return out.numel() * per_output


def _forward_probe(model: nn.Module, input_shape: tuple[int, int, int]) -> None:
    """Run one batch-1 forward on zeros without gradients, in eval mode, restoring the mode."""
    was_training = model.training
    set_mode(model, training=False)
    try:
        with torch.no_grad():
            model(torch.zeros((1, *tuple(input_shape))))
    except Exception as exc:
        raise ModelError(f"cannot count MACs: the model fails on input shape "
                         f"{(1, *tuple(input_shape))}: {type(exc).__name__}: {exc}") from exc
    finally:
        set_mode(model, training=was_training)


def count_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one forward pass at batch 1.

    Convolutions (grouped/depthwise included) and linear layers are counted; bias adds,
    normalisation and activations are not, matching the usual "MACs" convention.

    Args:
        model: The model; its train/eval mode is restored.
        input_shape: ``(C, H, W)`` of one sample.

    Raises:
        ModelError: If the forward pass fails.
    """
    hookable = [m for m in model.modules() if isinstance(m, (*_CONVS, nn.Linear))]
    if isinstance(model, torch.jit.ScriptModule) or not hookable:
        # No hookable layers: count at the aten level; that counter reports 2 FLOPs per MAC.
        counter = FlopCounterMode(display=False)
        with counter:
            _forward_probe(model, input_shape)
        return counter.get_total_flops() // 2
    total = 0

    def hook(module: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += out.numel() * module.in_features
        else:
            total += _conv_macs(module, out)

    handles = [m.register_forward_hook(hook) for m in hookable]
    try:
        _forward_probe(model, input_shape)
    finally:
        for handle in handles:
            handle.remove()
    return total
