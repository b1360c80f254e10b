"""Rebuild a pruned student as a trainable ``nn.Module`` from its plain state dict.

The ``.pt2`` program is what ships (it reloads without the model class), but QAT needs the
student as an ordinary module in training mode so that PT2E can fuse Conv+BatchNorm for
quantization-aware training; a ``torch.export`` program has BatchNorm frozen into its inference
form. Pruning only changes channel counts, so the unpruned architecture (which the recipe can
build) resized to the saved tensors' shapes *is* the pruned model. Only plain Conv/BatchNorm/
Linear layers are resized; anything else whose shape changed is an error, never a guess.
"""

from __future__ import annotations

from torch import nn

from edgecompress.errors import ModelError


def _resize_conv(mod: nn.Conv2d | nn.Conv1d, weight_shape: tuple[int, ...]) -> None:
    out_ch, in_per_group = weight_shape[0], weight_shape[1]
    depthwise = mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels
    if depthwise:
        mod.groups = out_ch
        mod.in_channels = out_ch
    else:
        mod.in_channels = in_per_group * mod.groups
    mod.out_channels = out_ch


def rebuild_pruned(model: nn.Module, state: dict) -> nn.Module:
    """Resize ``model``'s layers to the shapes in ``state`` and load it (strict).

    Raises:
        ModelError: A tensor's shape still disagrees after resizing (a layer type this function
            does not know was pruned), naming the tensor.
    """
    import torch

    for name, mod in model.named_modules():
        prefix = f"{name}." if name else ""
        weight = state.get(f"{prefix}weight")
        if weight is None:
            continue
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            _resize_conv(mod, tuple(weight.shape))
        elif isinstance(mod, nn.Linear):
            mod.out_features, mod.in_features = int(weight.shape[0]), int(weight.shape[1])
        elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            mod.num_features = int(weight.shape[0])
        else:
            continue
        for key, _ in list(mod.named_parameters(recurse=False)):
            setattr(mod, key, nn.Parameter(torch.empty_like(state[f"{prefix}{key}"])))
        for key, _ in list(mod.named_buffers(recurse=False)):
            if f"{prefix}{key}" in state:
                mod.register_buffer(key, torch.empty_like(state[f"{prefix}{key}"]))
    own = model.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise ModelError(f"cannot rebuild the pruned student: {key} has shape "
                             f"{tuple(value.shape)} in the pruned state but "
                             f"{tuple(own[key].shape)} in the rebuilt model")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ModelError(f"cannot rebuild the pruned student: {err}") from None
    return model.eval()
