"""Iterative structured pruning of one model toward a channel ratio or a MACs/params budget.

Each call to :meth:`StructuredPruner.step` traces the model afresh, scores every group, plans
how many channels each keeps for this step's slice of the target, and removes them. Recovery
training between steps is the caller's business (the prune stage distils from the teacher).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgecompress.errors import ConfigError
from edgecompress.models import count_macs, count_params, find_head
from edgecompress.prune.budget import (
    BUDGET_TOLERANCE,
    PLANS,
    GroupPlanInput,
    floor_plan,
    global_ratio_plan,
    make_plan,
    ratio_plan,
)
from edgecompress.prune.graph import ChannelGraph

logger = logging.getLogger(__name__)

#: Recipe key -> index of the quantity it budgets in ``CostModel.estimate``'s result.
_BUDGET_METRIC = {"target_macs_ratio": 0, "target_params_ratio": 1}


@dataclass(frozen=True)
class PruneTarget:
    """What the pruning aims at: ``key`` is ``ratio``, ``target_macs_ratio`` or
    ``target_params_ratio`` (the recipe key), ``value`` its setting."""

    key: str
    value: float

    @property
    def is_budget(self) -> bool:
        """True for MACs/params budgets, False for a channel ratio."""
        return self.key in _BUDGET_METRIC

    def at_step(self, step: int, steps: int) -> float:
        """This step's share: sparsity grows, budgets shrink linearly to the final value."""
        fraction = step / steps
        if self.is_budget:
            return 1.0 - (1.0 - self.value) * fraction
        return self.value * fraction


def resolve_layers(model: nn.Module, names: list[str]) -> list[nn.Module]:
    """Modules named in ``stages.prune.ignored_layers`` plus the classifier head.

    Raises:
        ConfigError: A name does not exist in the model (the message lists some that do).
    """
    layers = []
    for name in names:
        try:
            layers.append(model.get_submodule(name))
        except AttributeError:
            known = [n for n, _ in model.named_modules() if n][:40]
            raise ConfigError(f"stages.prune.ignored_layers: student has no layer '{name}'; "
                              f"layers include: {', '.join(known)}") from None
    layers.append(model.get_submodule(find_head(model)))
    return layers


class StructuredPruner:
    """Prunes ``model`` in place, in steps, remembering the original size and channel counts.

    Args:
        model: The model to prune (edited in place; stays the same object).
        example: A batch-1 input for tracing and cost measurement.
        target: Ratio or budget to reach at the last step.
        importance: A torch-pruning estimator (see :mod:`edgecompress.prune.importance`).
        round_to: Channel counts stay multiples of this.
        ignored_layers: Dotted names never to lose output channels (the head is added).
        plan: How the target is shared between groups, one of
            :data:`~edgecompress.prune.budget.PLANS` (see :mod:`edgecompress.prune.budget`).
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, *, target: PruneTarget,
                 importance: Any, round_to: int, ignored_layers: list[str],
                 plan: str = "greedy") -> None:
        if plan not in PLANS:
            raise ConfigError(f"stages.prune.plan: unknown plan {plan!r}; choose one of "
                              f"{', '.join(PLANS)}")
        self.plan = plan
        self.model = model
        self.example = example.detach().cpu()[:1]
        self.target = target
        self.importance = importance
        self.round_to = round_to
        self.ignored_names = list(ignored_layers)
        shape = tuple(self.example.shape[1:])
        self.original = {"macs": count_macs(model, shape), "params": count_params(model)}
        graph = ChannelGraph(model.cpu(), self.example, self._ignored(), importance=None)
        self.original_channels = graph.channels()
        self._channels_now = dict(self.original_channels)

    def _ignored(self) -> list[nn.Module]:
        return resolve_layers(self.model, self.ignored_names)

    def step(self, step: int, steps: int) -> dict[str, Any]:
        """Prune toward this step's slice of the target; returns what changed.

        The model is moved to the CPU for tracing and left there. For the Taylor criterion the
        caller must have filled ``.grad`` first.
        """
        self.model.cpu()
        graph = ChannelGraph(self.model, self.example, self._ignored(), self.importance)
        groups = [GroupPlanInput(g.name, g.channels,
                                 self.original_channels.get(g.name, g.channels), g.importance)
                  for g in graph.groups]
        goal = self.target.at_step(step, steps)
        if self.target.is_budget:
            index = _BUDGET_METRIC[self.target.key]
            base = self.original["macs" if index == 0 else "params"]
            plan = make_plan(self.plan, groups, lambda keep: graph.cost.estimate(keep)[index],
                             goal * base, self.round_to)
        elif self.plan == "global":
            plan = global_ratio_plan(groups, goal, self.round_to)
        else:
            plan = ratio_plan(groups, goal, self.round_to)
        before = graph.channels()
        graph.apply(plan)
        self.model.zero_grad(set_to_none=True)
        shape = tuple(self.example.shape[1:])
        macs, params = count_macs(self.model, shape), count_params(self.model)
        changed = {name: [before[name], plan[name]] for name in before
                   if plan[name] != before[name]}
        logger.info("prune step %d/%d (%s %.3f, %s plan): MACs %d -> %d, params %d, %d groups "
                    "changed", step, steps, self.target.key, goal, self.plan,
                    self.original["macs"], macs, params, len(changed))
        self._channels_now.update(plan)
        return {"step": step, "goal": round(goal, 6), "macs": macs, "params": params,
                "macs_ratio": macs / self.original["macs"],
                "params_ratio": params / self.original["params"], "groups": changed}

    def channels(self) -> dict[str, list[int]]:
        """Every prunable group's channels: ``{name: [original, kept]}`` (unpruned ones too)."""
        return {name: [original, self._channels_now.get(name, original)]
                for name, original in self.original_channels.items()}

    def summary(self) -> dict[str, Any]:
        """Final size vs the original, per-group channels, and whether a budget landed inside
        its window."""
        shape = tuple(self.example.shape[1:])
        macs, params = count_macs(self.model, shape), count_params(self.model)
        out: dict[str, Any] = {
            "params_before": self.original["params"], "params_after": params,
            "macs_before": self.original["macs"], "macs_after": macs,
            "params_ratio": params / self.original["params"],
            "macs_ratio": macs / self.original["macs"],
            "target": {self.target.key: self.target.value},
            "plan": self.plan,
            "channels": self.channels(),
            "groups_changed": sum(kept != original for original, kept in
                                  self.channels().values()),
        }
        if self.target.is_budget:
            achieved = out["macs_ratio" if self.target.key == "target_macs_ratio"
                           else "params_ratio"]
            out["within_tolerance"] = bool(
                (1 - BUDGET_TOLERANCE) * self.target.value <= achieved <= self.target.value)
        return out


def smallest_reachable(model: nn.Module, example: torch.Tensor, target: PruneTarget,
                       round_to: int, ignored_layers: list[str]) -> float:
    """The lowest MACs (or params) ratio a budget search could reach on ``model``.

    Used before training to reject a budget no plan can meet. Returns 0 for channel ratios,
    which are always reachable (groups just stop at their floor).

    Raises:
        ConfigError: An ignored layer does not exist, or no group may be pruned at all.
    """
    example = example.detach().cpu()[:1]
    graph = ChannelGraph(model.cpu(), example, resolve_layers(model, ignored_layers))
    if not graph.groups:
        raise ConfigError("stages.prune: nothing to prune: every group of the student touches "
                          "an ignored layer")
    if not target.is_budget:
        return 0.0
    groups = [GroupPlanInput(g.name, g.channels, g.channels) for g in graph.groups]
    index = _BUDGET_METRIC[target.key]
    full = graph.cost.estimate(graph.channels())[index]
    return graph.cost.estimate(floor_plan(groups, round_to))[index] / full
