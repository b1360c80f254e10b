"""Structured pruning of BERT-family students: attention heads and FFN neurons.

- **Heads**: scored by the L2 norm of their query/key/value rows and output-projection columns;
  the lowest ``heads_ratio`` per layer are removed with the model's own ``prune_heads``, which
  records them in ``config.pruned_heads``: ``from_pretrained`` re-applies that before loading the
  smaller weights, so the pruned model saves and reloads with the stock classes.
- **FFN neurons**: torch-pruning's DependencyGraph finds what each ``intermediate.dense`` output
  channel drags along (the GELU, ``output.dense``'s input columns); channels are scored with
  ``GroupMagnitudeImportance`` (L2 over the whole group) and removed. Every layer keeps the same
  width (``config.intermediate_size`` is one number), rounded to ``round_to``.

Both shrink the dense kernels: the exported ONNX graph has smaller MatMuls, not masks.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from edgecompress.errors import BackendUnavailable, ConfigError
from edgecompress.text.models import encoder_layers

logger = logging.getLogger(__name__)


def head_scores(layer: nn.Module) -> torch.Tensor:
    """L2 importance of each remaining head of one encoder layer."""
    attn = layer.attention.self
    n, d = attn.num_attention_heads, attn.attention_head_size
    rows = sum(lin.weight.detach().reshape(n, d, -1).pow(2).sum((1, 2))
               for lin in (attn.query, attn.key, attn.value))
    cols = layer.attention.output.dense.weight.detach().reshape(-1, n, d).pow(2).sum((0, 2))
    return (rows + cols).sqrt()


def prune_heads(model: nn.Module, ratio: float) -> dict[int, list[int]]:
    """Remove ``round(ratio * heads)`` heads per layer (at least one head stays).

    Returns:
        ``{layer: [original head indices removed]}`` (also merged into ``config.pruned_heads``).
    """
    plan: dict[int, list[int]] = {}
    for i, layer in enumerate(encoder_layers(model)):
        attn = layer.attention.self
        n = attn.num_attention_heads
        drop = min(n - 1, round(ratio * n))
        if drop <= 0:
            continue
        already = set(getattr(layer.attention, "pruned_heads", set()))
        remaining = [h for h in range(n + len(already)) if h not in already]
        order = torch.argsort(head_scores(layer)).tolist()[:drop]
        plan[i] = sorted(remaining[j] for j in order)
    if plan:
        model.prune_heads(plan)
    return plan


def _torch_pruning():
    try:
        import torch_pruning as tp
    except ImportError as exc:
        raise BackendUnavailable("FFN pruning needs torch-pruning: "
                                 "pip install 'edgecompress[prune]'") from exc
    return tp


def prune_ffn(model: nn.Module, ratio: float, round_to: int, example: dict[str, torch.Tensor]
              ) -> int:
    """Remove the least important FFN neurons, the same number in every layer.

    Returns:
        The new ``intermediate_size`` (also written to ``config.intermediate_size``).

    Raises:
        ConfigError: the ratio would leave no neuron (``prune.ffn_ratio``).
    """
    tp = _torch_pruning()
    width = model.config.intermediate_size
    keep = int(round(width * (1 - ratio) / round_to) * round_to) or round_to
    if keep >= width:
        return width
    if keep <= 0:
        raise ConfigError(f"prune.ffn_ratio: {ratio} leaves no FFN neuron")
    graph = tp.DependencyGraph().build_dependency(
        model, example_inputs=example, output_transform=lambda out: out.logits)
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    for layer in encoder_layers(model):
        dense = layer.intermediate.dense
        group = graph.get_pruning_group(dense, tp.prune_linear_out_channels,
                                        idxs=list(range(dense.out_features)))
        scores = importance(group)
        drop = torch.argsort(scores)[:dense.out_features - keep].tolist()
        graph.get_pruning_group(dense, tp.prune_linear_out_channels, idxs=drop).prune()
    model.config.intermediate_size = keep
    return keep


def prune_student(model: nn.Module, cfg: Any, example: dict[str, torch.Tensor]
                  ) -> dict[str, Any]:
    """Heads, then FFN neurons, as ``cfg`` (the recipe's ``prune``) asks; the plan as metrics."""
    model.eval()
    heads = prune_heads(model, cfg.heads_ratio) if cfg.heads_ratio > 0 else {}
    ffn = prune_ffn(model, cfg.ffn_ratio, cfg.round_to, example) if cfg.ffn_ratio > 0 \
        else model.config.intermediate_size
    logger.info("pruned heads %s, FFN width %d", heads, ffn)
    return {"pruned_heads": {str(k): v for k, v in heads.items()}, "intermediate_size": ffn}
