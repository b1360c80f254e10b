"""The model side of pruning: DepGraph groups, their channel costs, and removing channels.

A *group* is every tensor slice that must lose the same channels together: a conv's outputs,
the BatchNorm after it, the convs that read it, and everything tied to it through residual
adds (torch-pruning's DepGraph finds them by tracing). A group is named after its root layer;
the name is stable across pruning steps, so the original channel counts can be looked up later.

:class:`CostModel` predicts MACs and parameters for any per-group channel plan without touching
the model (a budget search evaluates thousands of plans); it is exact for convolutions, linear
layers and affine norms, and calibrated against :func:`edgecompress.models.count_macs` /
``count_params`` so the prediction for the unpruned plan equals the measured numbers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from edgecompress.errors import ModelError
from edgecompress.models import count_macs, count_params
from edgecompress.prune.importance import require_torch_pruning

logger = logging.getLogger(__name__)

_ROOT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class Group:
    """One prunable DepGraph group.

    Attributes:
        name: Dotted name of the root layer (stable across steps).
        channels: Channels the group has now.
        importance: Per-channel score (higher = keep), computed before any channel is removed.
    """

    name: str
    root: nn.Module
    handler: object
    channels: int
    importance: torch.Tensor | None = None


@dataclass
class _Layer:
    """A conv/linear layer's cost inputs: MACs = spatial * out * in_per_group * kernel."""

    spatial: int
    kernel: int
    out: int
    in_per_group: int
    depthwise: bool
    bias: bool
    out_group: str | None = None
    in_group: str | None = None


@dataclass
class CostModel:
    """Predicts (MACs, params) of a channel plan ``{group name: channels kept}``."""

    layers: list[_Layer] = field(default_factory=list)
    #: (group, params per channel, channels when measured) of norms and other per-channel layers
    norms: list[tuple[str, float, int]] = field(default_factory=list)
    fixed_macs: int = 0
    fixed_params: int = 0

    def estimate(self, keep: Mapping[str, int]) -> tuple[int, int]:
        """MACs (batch 1) and parameter count if every group kept ``keep[name]`` channels."""
        macs, params = self.fixed_macs, self.fixed_params
        for layer in self.layers:
            out = keep.get(layer.out_group, layer.out) if layer.out_group else layer.out
            cin = layer.in_per_group
            if layer.in_group and not layer.depthwise:
                cin = keep.get(layer.in_group, cin)
            macs += layer.spatial * out * cin * layer.kernel
            params += out * cin * layer.kernel + (out if layer.bias else 0)
        for group, per_channel, channels in self.norms:
            params += round(per_channel * keep.get(group, channels))
        return macs, params


def attention_projections(model: nn.Module) -> list[nn.Module]:
    """The layers whose output channels are attention heads, which must keep their width.

    Removing output channels of a fused ``qkv`` projection (timm), of ``query``/``key``/
    ``value`` (Hugging Face), or of ``nn.MultiheadAttention`` breaks the reshape into
    ``num_heads x head_dim`` that follows; the output projection ties the residual stream. Head
    pruning needs the head structure, so these layers are left whole and the MLP hidden units
    (``fc1``/``intermediate``) and convolutions carry the pruning.
    """
    found: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            found.append(module)
            continue
        if not hasattr(module, "num_heads") and not hasattr(module, "num_attention_heads"):
            continue
        for child_name in ("qkv", "q", "k", "v", "kv", "query", "key", "value", "proj",
                           "out_proj"):
            child = getattr(module, child_name, None)
            if isinstance(child, nn.Linear):
                found.append(child)
    return found


def _trace_culprit(exc: BaseException, names: Mapping[nn.Module, str]) -> str:
    """Where in the model a DepGraph trace failed: torch-pruning's node and the nearest layer.

    torch-pruning fails inside its index-mapping passes (a reshape/view, split or concat of the
    channel axis it cannot map, e.g. ShuffleNet's channel shuffle); its ``node`` locals say which.
    """
    tb, nodes = exc.__traceback__, []
    while tb is not None:
        for key in ("node", "out_node", "in_node"):
            node = tb.tb_frame.f_locals.get(key)
            if node is not None and hasattr(node, "inputs") and node not in nodes:
                nodes.append(node)
        tb = tb.tb_next
    if not nodes:
        return ""
    labels = [str(getattr(n, "name", n)).strip("<>") for n in nodes[:3]]
    layer, queue, seen = None, list(nodes), set()
    while queue and layer is None and len(seen) < 200:
        node = queue.pop(0)
        if id(node) in seen:
            continue
        seen.add(id(node))
        module = getattr(node, "module", None)
        if isinstance(module, nn.Module) and module in names and names[module]:
            layer = names[module]
            break
        queue.extend(getattr(node, "inputs", []))
    where = f" after layer {layer}" if layer else ""
    return (f" (at torch-pruning node(s) {', '.join(labels)}{where}: a reshape, split or concat "
            "of the channel axis it cannot map, such as a channel shuffle)")


def _is_depthwise(module: nn.Module) -> bool:
    return (isinstance(module, _ROOT_TYPES[:3]) and module.groups > 1
            and module.groups == module.in_channels == module.out_channels)


class ChannelGraph:
    """The prunable groups of ``model`` and what each costs, from one DepGraph trace.

    Args:
        model: The model (its mode is left in eval; pruning edits it in place).
        example: A batch-1 input used for tracing and for the layers' output sizes.
        ignored: Layers whose output channels must not change (their submodules too).
        importance: A torch-pruning estimator; ``None`` skips scoring (cost-only use).
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, ignored: Iterable[nn.Module],
                 importance=None) -> None:
        tp = require_torch_pruning()
        self.model = model
        model.eval()
        self._names = {module: name for name, module in model.named_modules()}
        try:
            self.dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        except Exception as exc:
            raise ModelError(f"torch-pruning cannot trace the student: {type(exc).__name__}: "
                             f"{exc}{_trace_culprit(exc, self._names)}. Ways out: "
                             "'stages.prune.enabled: false' (keep every channel), or a student "
                             "without that pattern") from exc
        attention = attention_projections(model)
        if attention:
            logger.info("prune: %d attention projection(s) keep their channels (heads are not "
                        "pruned; MLP hidden units and convs are): %s", len(attention),
                        ", ".join(self._names.get(m, "?") for m in attention[:6]))
        frozen = {id(sub) for layer in (*ignored, *attention) for sub in layer.modules()}
        self.groups: list[Group] = []
        self._members: dict[str, list] = {}
        for group in self.dg.get_all_groups(ignored_layers=[], root_module_types=_ROOT_TYPES):
            self._consider(group, frozen, importance)
        self.cost = self._cost_model(example)

    def _consider(self, group, frozen: set[int], importance) -> None:
        """Keep ``group`` if it may be pruned: no ignored layer loses outputs, no channel groups."""
        root, handler = group[0].dep.target.module, group[0].dep.handler
        name = self._names.get(root, type(root).__name__)
        for dep, _ in group:
            module = dep.target.module
            if id(module) in frozen and self.dg.is_out_channel_pruning_fn(dep.handler):
                logger.debug("group %s: keeps its channels (touches ignored layer %s)", name,
                             self._names.get(module))
                return
            if self._channel_groups(module) > 1:
                logger.info("group %s: not pruned (grouped convolution %s)", name,
                            self._names.get(module))
                return
        channels = self.dg.get_out_channels(root)
        scores = None
        if importance is not None:
            scores = importance(group)
            if scores is None:
                return
            scores = scores.detach().float().cpu()
        self.groups.append(Group(name, root, handler, channels, scores))
        self._members[name] = [(dep.target.module, dep.handler) for dep, _ in group]

    def _channel_groups(self, module: nn.Module) -> int:
        """Channel groups of a grouped (not depthwise) conv; such groups need tied indices."""
        pruner = self.dg.get_pruner_of_module(module)
        if pruner is None or _is_depthwise(module):
            return 1
        return max(pruner.get_in_channel_groups(module) or 1,
                   pruner.get_out_channel_groups(module) or 1)

    def _cost_model(self, example: torch.Tensor) -> CostModel:
        """Per-layer MAC/param terms, plus the constant remainder the model does not cover."""
        spatial: dict[nn.Module, int] = {}

        def hook(module: nn.Module, _inputs, out: torch.Tensor) -> None:
            channels = module.out_features if isinstance(module, nn.Linear) else \
                module.out_channels
            spatial[module] = out.numel() // (out.shape[0] * channels)

        layers = [m for m in self.model.modules() if isinstance(m, _ROOT_TYPES)]
        handles = [m.register_forward_hook(hook) for m in layers]
        try:
            with torch.no_grad():
                self.model(example)
        finally:
            for handle in handles:
                handle.remove()
        entries: dict[nn.Module, _Layer] = {}
        for module in layers:
            if module not in spatial:
                continue  # defined but unused in forward: costs no MACs, params stay fixed
            if isinstance(module, nn.Linear):
                entries[module] = _Layer(spatial[module], 1, module.out_features,
                                         module.in_features, False, module.bias is not None)
            else:
                entries[module] = _Layer(spatial[module], math.prod(module.kernel_size),
                                         module.out_channels,
                                         module.in_channels // module.groups,
                                         _is_depthwise(module), module.bias is not None)
        cost = CostModel(layers=list(entries.values()))
        for group in self.groups:
            for module, handler in self._members[group.name]:
                if module in entries:
                    if self.dg.is_out_channel_pruning_fn(handler):
                        entries[module].out_group = group.name
                    elif self.dg.is_in_channel_pruning_fn(handler):
                        entries[module].in_group = group.name
                elif isinstance(module, nn.Module) and not isinstance(module, _ROOT_TYPES):
                    own = sum(p.numel() for p in module.parameters(recurse=False))
                    if own:
                        cost.norms.append((group.name, own / group.channels, group.channels))
        shape = tuple(example.shape[1:])
        macs, params = cost.estimate(self.channels())
        cost.fixed_macs = count_macs(self.model, shape) - macs
        cost.fixed_params = count_params(self.model) - params
        return cost

    def channels(self) -> dict[str, int]:
        """Current channels of every prunable group."""
        return {g.name: g.channels for g in self.groups}

    def apply(self, keep: Mapping[str, int]) -> None:
        """Remove the least important channels of each group down to ``keep[name]``.

        Every index is chosen from the scores computed before the first removal, as
        torch-pruning's own pruners do; each group is re-derived from the graph just before it
        is pruned so earlier removals are accounted for.

        Raises:
            ModelError: A plan would empty a layer, or a group was built without scores.
        """
        for group in self.groups:
            kept = keep.get(group.name, group.channels)
            if kept >= group.channels:
                continue
            if group.importance is None:
                raise ModelError(f"group {group.name}: no importance scores to prune by")
            order = torch.argsort(group.importance, stable=True)
            drop = sorted(order[: group.channels - kept].tolist())
            pruning = self.dg.get_pruning_group(group.root, group.handler, drop)
            if not self.dg.check_pruning_group(pruning):
                raise ModelError(f"group {group.name}: removing {len(drop)} of "
                                 f"{group.channels} channels would empty a layer")
            pruning.prune()
            logger.debug("group %s: %d -> %d channels", group.name, group.channels, kept)
            group.channels = kept
