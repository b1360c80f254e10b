"""Channel plans: how many channels each group keeps to meet a ratio or a MACs/params budget.

Planning is kept apart from scoring and from editing the model: a plan is a plain
``{group name: channels kept}`` built from per-group scores and a cost function, so it is cheap
to search and easy to test.

Channel counts stay multiples of ``round_to`` (vector widths of SIMD/INT8 kernels). Rounding
alone makes budgets coarse on small layers (torch-pruning rounds each group down, which turns a
10% ratio on a 16-channel layer into 50%), so budgets are met greedily instead: remove
``round_to`` channels at a time from the group whose least important remaining channels cost
the least importance per MAC (or parameter) saved, and stop at the first plan inside the
tolerance window ``[(1 - tolerance) * target, target]``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

#: A group never keeps fewer than this fraction of its original channels under a budget: one
#: very thin layer is a bottleneck that recovery cannot repair, whatever the MACs it saves.
MIN_KEEP_FRACTION = 0.125
#: How far below the requested budget a plan may land.
BUDGET_TOLERANCE = 0.10


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


def budget_plan(groups: list[GroupPlanInput], cost: Callable[[Mapping[str, int]], float],
                target: float, round_to: int,
                tolerance: float = BUDGET_TOLERANCE) -> dict[str, int]:
    """Greedy plan whose ``cost`` lands in ``[(1 - tolerance) * target, target]`` if it can.

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
    keep = {g.name: g.channels for g in groups}
    ranked = {g.name: torch.sort(g.importance.float()).values for g in groups}
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
            candidates.append((lost / saved, value, g.name, nxt))
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
