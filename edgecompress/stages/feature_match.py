"""Automatic teacher/student layer pairing for feature distillation (``features: auto``).

Why: naming layers by hand (``features: [{teacher: layer3, student: features.13}]``) needs the
user to read both models' code and know which outputs line up. For the common cases the answer
follows from the shapes alone, so this module finds it by running one example batch through
both models with forward hooks:

- CNNs (NCHW outputs): the candidates are the *stage ends*: the tensor entering each module
  that changes the spatial size (named by the outermost module that produced it, so a stage,
  not the expansion conv inside the next strided block), plus the last map when no module
  reduces it. 1x1 maps are left out (globally pooled vectors: the logit term already covers
  them). Teacher and student stage
  ends are paired by equal spatial size, then by nearest depth fraction when a size occurs
  several times.
- Anything else with (N, D) or (N, L, D) outputs (MLPs, transformers): blocks chosen by depth
  fraction. When a model has repeated blocks (same-class children of a Sequential/ModuleList,
  e.g. transformer layers) only those are candidates; of the modules finishing between two
  parameterised layers only the last one is kept (the activation after a Linear, not the
  Linear). Each student candidate is paired with the teacher candidate at the nearest depth.

Depth fraction = parameterised leaf layers finished so far / all of them in one forward pass.
Modules that run more than once per forward, return anything but a single float tensor, produce
the model's output, or whose output is modified in place later in the forward are never
candidates (a tap of them would be ambiguous or break autograd). The deepest ``count`` pairs are
returned as :class:`~edgecompress.recipe.FeatureMatch` objects, usable wherever the explicit
``stages.distill.features`` list is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgecompress.errors import ConfigError
from edgecompress.recipe import DistillConfig, FeatureMatch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """A layer whose output could be matched: its name, output shape and depth fraction."""

    name: str
    shape: tuple[int, ...]
    depth: float

    def describe(self) -> str:
        """``name (C, H, W) @0.42`` (batch dimension left out)."""
        return f"{self.name} {tuple(self.shape[1:])} @{self.depth:.2f}"


@dataclass
class _Event:
    name: str
    output: Any
    version: int
    params_done: int
    calls: int = 1


def _has_own_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def _repeated_blocks(model: nn.Module) -> set[str]:
    """Names of composite children of a Sequential/ModuleList whose class occurs there at least
    twice (transformer layers, residual blocks; not the Linear/ReLU leaves of an MLP)."""
    out: set[str] = set()
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Sequential, nn.ModuleList)):
            continue
        children = list(module.named_children())
        for child_name, child in children:
            if (any(True for _ in child.children())
                    and sum(type(c) is type(child) for _, c in children) >= 2):
                out.add(f"{name}.{child_name}" if name else child_name)
    return out


def trace_candidates(model: nn.Module, example: torch.Tensor
                     ) -> tuple[list[Candidate], list[Candidate]]:
    """Run ``example`` through ``model`` (eval mode, no grad) and return its candidate layers.

    Returns:
        (spatial, sequence): stage ends with NCHW outputs larger than 1x1, and the rank-2/3
        candidates chosen as the module docstring describes, both in execution order.
    """
    events: dict[str, _Event] = {}
    order: list[str] = []
    params_done = [0]
    clock = [0]
    handles = []

    def pre_hook(name: str):
        def fn(_module, inputs):
            clock[0] += 1
            if name not in events and name not in starts:
                first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
                starts[name] = (clock[0], first)
        return fn

    def hook(name: str):
        def fn(module, _inputs, output):
            clock[0] += 1
            if _has_own_params(module) and not list(module.children()):
                params_done[0] += 1
            if name in events:
                events[name].calls += 1
                return
            version = output._version if isinstance(output, torch.Tensor) else 0
            events[name] = _Event(name, output, version, params_done[0])
            ends[name] = clock[0]
            order.append(name)
        return fn

    starts: dict[str, tuple[int, torch.Tensor | None]] = {}
    ends: dict[str, int] = {}
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(pre_hook(name)))
            handles.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            final = model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    total = max(params_done[0], 1)

    usable: list[_Event] = []
    for name in order:
        e = events[name]
        out = e.output
        if (e.calls == 1 and isinstance(out, torch.Tensor) and out.is_floating_point()
                and out is not final and out._version == e.version and e.params_done > 0):
            usable.append(e)

    def is_map(t: Any) -> bool:
        return isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[-2:].numel() > 1

    # Stage ends: the input of each module that changes the spatial size is the output of the
    # stage before it; name it by the outermost usable module that produced that very tensor.
    # Of nested modules making the same change (a stage, its first block, the strided conv in
    # it) the outermost one that started first decides, so a block's inner expansion conv is
    # never taken for a stage end.
    spatial: list[Candidate] = []
    taken: list[tuple[int, int, tuple]] = []  # (start, end, (in size, out size)) of transitions
    for name in sorted(starts, key=lambda n: starts[n][0]):
        start, inp = starts[name]
        e = events.get(name)
        if e is None or not isinstance(inp, torch.Tensor) or inp.dim() != 4:
            continue
        out = e.output
        if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[-2:] == inp.shape[-2:]:
            continue
        change = (tuple(inp.shape[-2:]), tuple(out.shape[-2:]))
        if any(s <= start <= end and c == change for s, end, c in taken):
            continue
        producer = [u for u in usable if u.output is inp]
        if not producer or not is_map(inp):
            continue
        taken.append((start, ends[name], change))
        p = producer[-1]
        if all(c.name != p.name for c in spatial):
            spatial.append(Candidate(p.name, tuple(inp.shape), p.params_done / total))
    maps = [e for e in usable if is_map(e.output)]
    if maps and (not spatial or maps[-1].params_done / total > spatial[-1].depth
                 and maps[-1].output.shape[-2:] != spatial[-1].shape[-2:]):
        last = maps[-1]  # the network ends on a map no module reduces (e.g. x.mean((2, 3)))
        spatial.append(Candidate(last.name, tuple(last.output.shape), last.params_done / total))
    spatial.sort(key=lambda c: c.depth)

    flat = [e for e in usable if e.output.dim() in (2, 3)]
    blocks = _repeated_blocks(model)
    if any(e.name in blocks for e in flat):
        flat = [e for e in flat if e.name in blocks]
    sequence: list[Candidate] = []
    for i, e in enumerate(flat):
        nxt = flat[i + 1] if i + 1 < len(flat) else None
        if nxt is None or nxt.params_done != e.params_done:
            sequence.append(Candidate(e.name, tuple(e.output.shape), e.params_done / total))
    return spatial, sequence


def _pair(teacher: list[Candidate], student: list[Candidate], key) -> list[tuple]:
    """Greedy one-to-one pairing: per student candidate (deepest first), the unused teacher
    candidate with the same ``key`` at the nearest depth (the deeper one on ties)."""
    pairs, used = [], set()
    for s in sorted(student, key=lambda c: -c.depth):
        options = [t for t in teacher if key(t) == key(s) and t.name not in used]
        if not options:
            continue
        t = min(options, key=lambda c: (abs(c.depth - s.depth), -c.depth))
        used.add(t.name)
        pairs.append((t, s))
    return pairs


def match_layers(teacher: nn.Module, student: nn.Module, example: torch.Tensor, *,
                 count: int = 3, weight: float = 1.0) -> list[FeatureMatch]:
    """Pair teacher and student layers for feature distillation from their output shapes.

    Args:
        teacher, student: the two models (their training mode is restored afterwards).
        example: one input batch both models accept (a couple of samples is enough).
        count: most pairs returned (the deepest ones).
        weight: the MSE weight of every pair.

    Returns:
        Up to ``count`` pairs, shallowest first.

    Raises:
        ConfigError: no pair can be found; the message lists both models' candidates.
    """
    t_spatial, t_seq = trace_candidates(teacher, example)
    s_spatial, s_seq = trace_candidates(student, example)
    pairs = _pair(t_spatial, s_spatial, key=lambda c: c.shape[-2:])
    if not pairs:  # vectors / sequences: same rank, same sequence length for (N, L, D)
        pairs = _pair(t_seq, s_seq, key=lambda c: (len(c.shape), c.shape[1:-1]))
    if not pairs:
        def listing(cands: list[Candidate]) -> str:
            return ", ".join(c.describe() for c in cands) or "none"
        raise ConfigError(
            "stages.distill.features: auto found no teacher/student layer pair (CNN stage ends "
            "pair by equal spatial size, (N, D) / (N, L, D) outputs by depth with equal rank and "
            "sequence length); teacher candidates: "
            f"{listing(t_spatial + t_seq)}; student candidates: {listing(s_spatial + s_seq)}. "
            "Name the layers explicitly (features: [{teacher: ..., student: ...}]).")
    pairs = sorted(pairs, key=lambda p: p[1].depth)[-count:]
    return [FeatureMatch(teacher=t.name, student=s.name, weight=weight) for t, s in pairs]


def resolve_features(cfg: DistillConfig, teacher: nn.Module, student: nn.Module,
                     example: torch.Tensor) -> tuple[DistillConfig, list[dict[str, Any]] | None]:
    """``cfg`` with ``features: auto`` replaced by the matched pairs, and those pairs as plain
    dicts for the stage metrics (None when the features were given explicitly or are off)."""
    if cfg.features != "auto":
        return cfg, None
    pairs = match_layers(teacher, student, example, count=cfg.feature_pairs,
                         weight=cfg.feature_weight)
    logger.info("distill features: auto matched %s", ", ".join(
        f"teacher {p.teacher} <- student {p.student}" for p in pairs))
    return cfg.model_copy(update={"features": pairs}), [p.model_dump() for p in pairs]


def preflight_auto_features(cfg: DistillConfig, teacher: nn.Module, student: nn.Module,
                            example: Any) -> list[FeatureMatch]:
    """The pairs ``features: auto`` will use (none when the stage is off), checked before a run
    starts; ``example`` is a couple of training inputs (array or tensor)."""
    if not cfg.enabled:
        return []
    x = torch.as_tensor(example)
    return match_layers(teacher, student, x, count=cfg.feature_pairs, weight=cfg.feature_weight)
