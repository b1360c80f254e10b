"""Rebuild a pruned student as a trainable ``nn.Module`` from its plain state dict.

The ``.pt2`` program is what ships (it reloads without the model class), but QAT needs the
student as an ordinary module in training mode so that PT2E can fuse Conv+BatchNorm for
quantization-aware training; a ``torch.export`` program has BatchNorm frozen into its inference
form. Pruning only changes channel counts, so the unpruned architecture (which the recipe can
build) resized to the saved tensors' shapes *is* the pruned model. Conv, Linear, BatchNorm,
LayerNorm (torchvision's LayerNorm2d too) and GroupNorm get their size attributes updated; a
bare parameter or buffer of any other module (ConvNeXt's ``layer_scale``, a ViT's ``cls_token``
or ``pos_embed``) is resized to its saved shape, since such modules read the tensor, not a size
attribute. :func:`check_rebuild` then compares the rebuilt module with the pruned one on a
sample, so a module that also keeps a size attribute fails loudly instead of computing garbage.
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
        elif isinstance(mod, nn.LayerNorm):
            mod.normalized_shape = tuple(int(d) for d in weight.shape)
        elif isinstance(mod, nn.GroupNorm):
            mod.num_channels = int(weight.shape[0])
    for name, mod in model.named_modules():  # every tensor to its saved shape
        prefix = f"{name}." if name else ""
        for key, param in list(mod.named_parameters(recurse=False)):
            saved = state.get(f"{prefix}{key}")
            if saved is not None and saved.shape != param.shape:
                setattr(mod, key, nn.Parameter(torch.empty_like(saved),
                                               requires_grad=param.requires_grad))
        for key, buf in list(mod.named_buffers(recurse=False)):
            saved = state.get(f"{prefix}{key}")
            if saved is not None and buf is not None and saved.shape != buf.shape:
                mod.register_buffer(key, torch.empty_like(saved))
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


def check_rebuild(rebuilt: nn.Module, pruned: nn.Module, sample) -> None:
    """The rebuilt module must compute what the pruned one computes (eval mode, one sample).

    Raises:
        ModelError: The outputs differ (a module kept a size attribute the rebuild did not
            update), naming the largest difference.
    """
    import torch

    with torch.no_grad():
        rebuilt.eval()
        pruned.eval()
        try:
            got = rebuilt(sample)
        except Exception as err:  # noqa: BLE001 - any failure means the rebuild is wrong
            raise ModelError(f"cannot rebuild the pruned student: the resized model fails: "
                             f"{type(err).__name__}: {err}") from None
        want = pruned(sample)
    diff = float((got - want).abs().max())
    if not diff <= 1e-4 * max(1.0, float(want.abs().max())):
        raise ModelError(f"cannot rebuild the pruned student: the resized model differs from the "
                         f"pruned one by {diff:.3g} (a layer type that keeps its size in an "
                         "attribute); add that layer to stages.prune.ignored_layers or set "
                         "stages.prune.enabled: false")
