"""stages.prune.plan: greedy, uniform and global plans land in the budget window on real models
(real torch-pruning), respect floors and round_to, and the recipe field validates."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgecompress.errors import BackendUnavailable, ConfigError
from edgecompress.models import build_builtin, count_macs, count_params
from edgecompress.prune.budget import (
    GroupPlanInput,
    global_plan,
    global_ratio_plan,
    min_channels,
    nearest_multiple,
    uniform_plan,
)
from edgecompress.prune.importance import make_importance
from edgecompress.prune.pruner import PruneTarget, StructuredPruner
from edgecompress.recipe import PRUNE_PLANS, parse_recipe
from edgecompress.report import render_markdown

SHAPE = (1, 8, 8)


def _model(family: str) -> nn.Module:
    torch.manual_seed(0)
    return build_builtin(family, num_classes=10, in_channels=1, width=0.5, depth=1).eval()


def _prune(model: nn.Module, shape: tuple[int, ...], plan: str, key: str = "target_macs_ratio",
           value: float = 0.5) -> StructuredPruner:
    pruner = StructuredPruner(model, torch.randn(1, *shape), target=PruneTarget(key, value),
                              importance=make_importance("l2"), round_to=8, ignored_layers=[],
                              plan=plan)
    pruner.step(1, 1)
    return pruner


def _resnet18() -> nn.Module:
    from edgecompress.models.zoo import import_torchvision

    try:
        tv = import_torchvision()
    except BackendUnavailable as exc:
        pytest.skip(f"torchvision not importable: {exc}")
    torch.manual_seed(0)
    return tv.models.resnet18(num_classes=10).eval()


@pytest.mark.parametrize("plan", PRUNE_PLANS)
@pytest.mark.parametrize("family", ["resnet", "mobilenet"])
@pytest.mark.parametrize("key, measure", [("target_macs_ratio", lambda m: count_macs(m, SHAPE)),
                                          ("target_params_ratio", count_params)])
def test_every_plan_lands_in_the_window_with_floors_and_round_to(plan, family, key, measure):
    model = _model(family)
    before = measure(model)
    pruner = _prune(model, SHAPE, plan, key)
    summary = pruner.summary()
    assert 0.45 <= measure(model) / before <= 0.5
    assert summary["within_tolerance"] is True and summary["plan"] == plan
    channels = summary["channels"]
    assert summary["groups_changed"] == sum(a != b for a, b in channels.values()) > 0
    for name, (original, kept) in channels.items():
        assert kept == model.get_submodule(name).weight.shape[0]  # the report tells the truth
        assert kept >= min_channels(original, 8, budget=True)
        assert kept % 8 == 0 or kept == original
    assert model(torch.randn(2, *SHAPE)).shape == (2, 10)


def test_global_thins_more_groups_than_greedy_on_resnet18():
    # The issue: greedy at 50% MACs thinned only the stem and the layer2 residual group.
    counts = {}
    for plan in ("greedy", "global", "uniform"):
        model = _resnet18()
        summary = _prune(model, (3, 32, 32), plan).summary()
        assert summary["within_tolerance"] is True
        counts[plan] = summary["groups_changed"]
    assert counts["greedy"] <= 3
    assert counts["global"] > counts["greedy"] and counts["uniform"] > counts["greedy"]


def test_uniform_keeps_one_fraction_and_global_follows_the_scores():
    groups = [GroupPlanInput("a", 64, 64, torch.ones(64)),
              GroupPlanInput("b", 64, 64, torch.cat([torch.full((48,), 0.01),
                                                     torch.ones(16)])),
              GroupPlanInput("c", 64, 64, torch.ones(64) * 100)]  # scale must not matter

    def cost(keep):
        return float(sum(keep.values()))

    uniform = uniform_plan(groups, cost, 0.5 * 192, 8)
    assert len(set(uniform.values())) == 1 and 0.45 * 192 <= cost(uniform) <= 0.5 * 192
    glob = global_plan(groups, cost, 0.75 * 192, 8)
    assert glob == {"a": 64, "b": 16, "c": 64}  # b's weak channels are the globally weakest
    assert global_ratio_plan(groups, 0.25, 8) == glob
    # an unreachable budget stops every plan at the floors (1/8 of the original, round_to)
    for plan_fn in (uniform_plan, global_plan):
        assert plan_fn(groups, cost, 1.0, 8) == {"a": 8, "b": 8, "c": 8}
    small = [GroupPlanInput("s", 8, 8, torch.ones(8)), GroupPlanInput("t", 40, 40, torch.ones(40))]
    assert uniform_plan(small, cost, 1.0, 8) == {"s": 8, "t": 8}  # one-block groups stay whole


def test_channel_ratio_per_plan():
    sizes = {}
    for plan in PRUNE_PLANS:
        sizes[plan] = _prune(_model("resnet"), SHAPE, plan, "ratio", 0.5).summary()["channels"]
    assert sizes["greedy"] == sizes["uniform"]  # both: that fraction of every group
    assert all(kept == nearest_multiple(original / 2, 8) or original <= 8
               for original, kept in sizes["uniform"].values())
    # global: half of all channels together, some groups losing more than half, some less
    kept = sum(k for _, k in sizes["global"].values())
    assert 0.45 <= kept / sum(o for o, _ in sizes["global"].values()) <= 0.5


def test_plan_field_validates_and_defaults():
    assert parse_recipe({}).stages.prune.plan in PRUNE_PLANS
    for plan in PRUNE_PLANS:
        cfg = parse_recipe({"stages": {"prune": {"enabled": True, "target_macs_ratio": 0.5,
                                                 "plan": plan}}}).stages.prune
        assert cfg.plan == plan
    with pytest.raises(ConfigError, match="stages.prune.plan"):
        parse_recipe({"stages": {"prune": {"enabled": True, "ratio": 0.5, "plan": "random"}}})
    with pytest.raises(ConfigError, match="stages.prune.plan"):
        StructuredPruner(_model("resnet"), torch.randn(1, *SHAPE),
                         target=PruneTarget("ratio", 0.5), importance=make_importance("l2"),
                         round_to=8, ignored_layers=[], plan="random")


def test_report_markdown_lists_the_channels_kept():
    report = {"teacher": {"accuracy": 0.9, "params": 1000, "macs": 5000},
              "student": {"accuracy_fp32": 0.8, "params": 400, "macs": 2000},
              "stages": [{"name": "prune", "metrics": {
                  "enabled": True, "plan": "global", "importance": "l2",
                  "params_before": 800, "macs_before": 4000,
                  "channels": {"conv1": [64, 40], "layer1.0.conv1": [64, 64]}}}],
              "targets": [], "gate": {"passed": True, "violations": []}}
    md = render_markdown(report)
    assert "global plan, l2 importance): 1 of 2 channel groups thinned" in md
    assert "| conv1 | 64 -> 40 | 62% |" in md and "layer1.0.conv1" not in md
