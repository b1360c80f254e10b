"""Channel plans: how many channels each group keeps to meet a ratio or a MACs/params budget.

Planning is kept apart from scoring and from editing the model: a plan is a plain
``{group name: channels kept}`` built from per-group scores and a cost function, so it is cheap
to search and easy to test.

Channel counts stay multiples of ``round_to`` (vector widths of SIMD/INT8 kernels). Rounding
alone makes budgets coarse on small layers (torch-pruning rounds each group down, which turns a
10% ratio on a 16-channel layer into 50%), so budgets are searched on the cost model, with one
of three plans (:data:`PLANS`, the recipe's ``stages.prune.plan``):

- ``greedy`` (:func:`budget_plan`): remove ``round_to`` channels at a time from the group whose
  least important remaining channels cost the least importance per MAC (or parameter) saved.
  Cheap-per-MAC channels of the high-resolution layers go first, often down to their floor.
- ``uniform`` (:func:`uniform_plan`): every group keeps the same fraction of its original
  channels; the fraction is found by bisection on the cost model.
- ``global`` (:func:`global_plan`): scores are made comparable across groups (each divided by
  its group's mean) and the network-wide least important ``round_to`` blocks are removed,
  whatever they cost, as torch-pruning's ``global_pruning`` does.

Every plan stops at the first plan inside the tolerance window
``[(1 - tolerance) * target, target]`` and never takes a group below :func:`min_channels`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from edgecompress.errors import ConfigError, ModelError
from edgecompress.recipe import PRUNE_PLANS

logger = logging.getLogger(__name__)

#: A group never keeps fewer than this fraction of its original channels under a budget: one
#: very thin layer is a bottleneck that recovery cannot repair, whatever the MACs it saves.
MIN_KEEP_FRACTION = 0.125
#: How far below the requested budget a plan may land.
BUDGET_TOLERANCE = 0.10
#: Plan names of ``stages.prune.plan`` (see the module docstring).
PLANS = PRUNE_PLANS


@dataclass(frozen=True)
class GroupPlanInput:
    """What planning needs to know about one group.

    Attributes:
        name: Group name.
        channels: Channels now.
        original: Channels before the first pruning step.
        importance: Per-channel scores now (any order), or ``None`` for ratio plans.
    """

    name: str
    channels: int
    original: int
    importance: torch.Tensor | None = None


def nearest_multiple(value: float, round_to: int) -> int:
    """``value`` rounded half-up to a multiple of ``round_to``."""
    return int(math.floor(value / round_to + 0.5)) * round_to


def min_channels(original: int, round_to: int, *, budget: bool) -> int:
    """The fewest channels a group may keep.

    A group not larger than one ``round_to`` block is never pruned; otherwise at least one block
    survives, and under a budget at least :data:`MIN_KEEP_FRACTION` of the original.
    """
    if original <= round_to:
        return original
    floor = round_to
    if budget:
        floor = max(floor, math.ceil(original * MIN_KEEP_FRACTION / round_to) * round_to)
    return min(floor, original)


def ratio_plan(groups: list[GroupPlanInput], ratio: float, round_to: int) -> dict[str, int]:
    """Every group keeps ``(1 - ratio)`` of its original channels, rounded to ``round_to``.

    Counts never grow back (iterative steps only remove) and never drop below
    :func:`min_channels`.
    """
    plan = {}
    for g in groups:
        wanted = nearest_multiple(g.original * (1.0 - ratio), round_to)
        plan[g.name] = min(g.channels, max(wanted, min_channels(g.original, round_to,
                                                                 budget=False)))
    return plan


def _next_down(channels: int, round_to: int) -> int:
    """The largest multiple of ``round_to`` strictly below ``channels``."""
    return ((channels - 1) // round_to) * round_to


def _lowest_reachable(channels: int, floor: int, round_to: int) -> int:
    """The fewest channels reachable from ``channels`` in whole ``round_to`` steps, >= floor."""
    value = channels
    while 0 < _next_down(value, round_to) and _next_down(value, round_to) >= floor:
        value = _next_down(value, round_to)
    return value


def floor_plan(groups: list[GroupPlanInput], round_to: int) -> dict[str, int]:
    """The smallest plan a budget search may reach (every group at its floor)."""
    return {g.name: _lowest_reachable(g.channels, min_channels(g.original, round_to, budget=True),
                                      round_to) for g in groups}


def _block_scores(groups: list[GroupPlanInput], *, normalise: bool) -> dict[str, torch.Tensor]:
    """Each group's current scores in ascending order (divided by their mean if ``normalise``)."""
    ranked = {}
    for g in groups:
        if g.importance is None:
            raise ModelError(f"group {g.name}: a budget plan needs importance scores")
        scores = g.importance.float()
        if normalise:
            scores = scores / scores.mean().clamp_min(1e-12)
        ranked[g.name] = torch.sort(scores).values
    return ranked


def _remove_blocks(groups: list[GroupPlanInput], cost: Callable[[Mapping[str, int]], float],
                   target: float, round_to: int, tolerance: float, *,
                   per_cost: bool) -> dict[str, int]:
    """Remove ``round_to`` blocks one at a time until ``cost`` is inside the window.

    The next block of each group is its least important remaining channels. ``per_cost``
    ranks blocks by importance lost per unit of cost saved (greedy); otherwise by the mean
    normalised importance of the block alone (global).
    """
    keep = {g.name: g.channels for g in groups}
    ranked = _block_scores(groups, normalise=not per_cost)
    floors = {g.name: min_channels(g.original, round_to, budget=True) for g in groups}
    current = cost(keep)
    lower = (1.0 - tolerance) * target
    while current > target:
        candidates = []
        for g in groups:
            now = keep[g.name]
            nxt = _next_down(now, round_to)
            if nxt < floors[g.name] or nxt <= 0:
                continue
            trial = {**keep, g.name: nxt}
            value = cost(trial)
            saved = current - value
            if saved <= 0:
                continue
            lost = float(ranked[g.name][g.channels - now: g.channels - nxt].sum())
            key = lost / saved if per_cost else lost / (now - nxt)
            candidates.append((key, value, g.name, nxt))
        if not candidates:
            logger.warning("budget %.0f unreachable: every group is at its floor (%.0f)", target,
                           current)
            break
        inside = [c for c in candidates if lower <= c[1] <= target]
        above = [c for c in candidates if c[1] > target]
        if inside:
            choice = min(inside)
        elif above:
            choice = min(above)
        else:  # every removal overshoots the window: take the smallest overshoot and stop
            choice = max(candidates, key=lambda c: c[1])
        _, current, name, nxt = choice
        keep[name] = nxt
        if inside or not above:
            break
    return keep


def budget_plan(groups: list[GroupPlanInput], cost: Callable[[Mapping[str, int]], float],
                target: float, round_to: int,
                tolerance: float = BUDGET_TOLERANCE) -> dict[str, int]:
    """Greedy plan whose ``cost`` lands in ``[(1 - tolerance) * target, target]`` if it can.

    Removes the block that loses the least importance per unit of cost saved, so the layers
    whose channels cost the most (high resolution) are thinned first.

    Args:
        groups: The prunable groups with their current importance scores.
        cost: Predicted MACs or parameters of a plan.
        target: The budget in the same unit as ``cost``.
        round_to: Channels are removed in blocks of this size.
        tolerance: Relative width of the acceptance window below ``target``.

    Returns:
        The plan. Its cost is above ``target`` only when every group is at its floor; it is
        below the window only when no single removal lands inside it.
    """
    return _remove_blocks(groups, cost, target, round_to, tolerance, per_cost=True)


def global_plan(groups: list[GroupPlanInput], cost: Callable[[Mapping[str, int]], float],
                target: float, round_to: int,
                tolerance: float = BUDGET_TOLERANCE) -> dict[str, int]:
    """Network-wide plan: the globally least important blocks go first, whatever they cost.

    Each group's scores are divided by their mean so they compare across groups (a group whose
    channels are all alike scores about 1 everywhere; one with a few strong channels has many
    near 0). The block with the lowest mean normalised score is removed until ``cost`` is in
    the window; the cost only decides when to stop and which block lands inside the window.
    Same arguments and guarantees as :func:`budget_plan`.
    """
    return _remove_blocks(groups, cost, target, round_to, tolerance, per_cost=False)


def _uniform_keep(groups: list[GroupPlanInput], fraction: float, round_to: int) -> dict[str, int]:
    """Every group at ``fraction`` of its original channels (rounded, floored, never grown)."""
    plan = {}
    for g in groups:
        wanted = nearest_multiple(g.original * fraction, round_to)
        floor = _lowest_reachable(g.channels, min_channels(g.original, round_to, budget=True),
                                  round_to)
        plan[g.name] = min(g.channels, max(wanted, floor))
    return plan


def uniform_plan(groups: list[GroupPlanInput], cost: Callable[[Mapping[str, int]], float],
                 target: float, round_to: int,
                 tolerance: float = BUDGET_TOLERANCE) -> dict[str, int]:
    """Every group keeps the same fraction of its original channels, the largest whose plan
    costs at most ``target``.

    The fraction is found by bisection (the cost grows with it). Rounding to ``round_to`` makes
    the cost a step function, and on small models the next step up can jump over the whole
    window; then single ``round_to`` blocks are given back, each to the group thinned most
    relative to its original size, while the cost stays within ``target``, so the groups stay
    within one block of the common fraction. The plan is above ``target`` only when every group
    is at its floor, below the window only when no block can be given back (both logged).
    """
    low, high = 0.0, 1.0
    if cost(_uniform_keep(groups, high, round_to)) <= target:
        return _uniform_keep(groups, high, round_to)
    for _ in range(40):
        mid = (low + high) / 2
        if cost(_uniform_keep(groups, mid, round_to)) <= target:
            low = mid
        else:
            high = mid
    plan = _uniform_keep(groups, low, round_to)
    value = cost(plan)
    lower = (1.0 - tolerance) * target
    while lower > value:
        fits = []
        for g in groups:
            grown = min(g.channels, plan[g.name] + round_to)
            if grown > plan[g.name]:
                trial = {**plan, g.name: grown}
                if cost(trial) <= target:
                    fits.append((plan[g.name] / g.original, g.name, grown))
        if not fits:
            break
        _, name, grown = min(fits)
        plan[name] = grown
        value = cost(plan)
    if value > target:
        logger.warning("budget %.0f unreachable: every group is at its floor (%.0f)", target,
                       value)
    elif value < lower:
        logger.warning("uniform plan (keep %.3f) lands below the budget window: %.0f < %.0f "
                       "(round_to steps are coarse here)", low, value, lower)
    return plan


def make_plan(name: str, groups: list[GroupPlanInput],
              cost: Callable[[Mapping[str, int]], float], target: float, round_to: int,
              tolerance: float = BUDGET_TOLERANCE) -> dict[str, int]:
    """The budget plan called ``name`` (one of :data:`PLANS`).

    Raises:
        ConfigError: ``name`` is not a known plan.
    """
    plans = {"greedy": budget_plan, "uniform": uniform_plan, "global": global_plan}
    if name not in plans:
        raise ConfigError(f"stages.prune.plan: unknown plan {name!r}; choose one of "
                          f"{', '.join(PLANS)}")
    return plans[name](groups, cost, target, round_to, tolerance)


def global_ratio_plan(groups: list[GroupPlanInput], ratio: float,
                      round_to: int) -> dict[str, int]:
    """A channel ratio network-wide: ``ratio`` of all original channels removed, chosen by
    :func:`global_plan` (so some groups lose more than ``ratio``, some nothing)."""
    total = sum(g.original for g in groups)
    return global_plan(groups, lambda keep: float(sum(keep.values())), (1.0 - ratio) * total,
                       round_to)
