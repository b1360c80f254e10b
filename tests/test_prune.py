"""prune stage: budgets on both built-in families, ONNX really shrinks, the .pt2 reloads without
edgecompress, every importance criterion, config errors before training, and a full pipeline."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.errors import ConfigError
from edgecompress.models import build_builtin, count_macs, count_params
from edgecompress.pipeline import Pipeline, read_stage_manifest
from edgecompress.prune.artifact import load_pruned, save_pruned
from edgecompress.prune.budget import GroupPlanInput, budget_plan, ratio_plan
from edgecompress.prune.graph import ChannelGraph
from edgecompress.prune.importance import accumulate_gradients, make_importance
from edgecompress.prune.pruner import PruneTarget, StructuredPruner
from edgecompress.recipe import load_recipe, parse_recipe

SHAPE = (1, 8, 8)
FAMILIES = ["resnet", "mobilenet"]


def _model(family: str) -> nn.Module:
    torch.manual_seed(0)
    return build_builtin(family, num_classes=10, in_channels=1, width=0.5, depth=1).eval()


def _prune(model: nn.Module, key: str, value: float, importance: str = "l2") -> StructuredPruner:
    pruner = StructuredPruner(model, torch.randn(1, *SHAPE), target=PruneTarget(key, value),
                              importance=make_importance(importance), round_to=8,
                              ignored_layers=[])
    pruner.step(1, 1)
    return pruner


def _onnx_params(path) -> int:
    import onnx

    return sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("key, measure", [("target_macs_ratio", lambda m: count_macs(m, SHAPE)),
                                          ("target_params_ratio", count_params)])
def test_budget_lands_within_ten_percent(family, key, measure):
    model = _model(family)
    before = measure(model)
    summary = _prune(model, key, 0.5).summary()
    ratio = measure(model) / before
    assert 0.45 <= ratio <= 0.5, ratio
    assert summary["within_tolerance"] is True
    assert model(torch.randn(3, *SHAPE)).shape == (3, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.out_channels % 8 == 0 for c in convs)  # round_to holds
    assert model.classifier.out_features == 10  # the head is never pruned


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_onnx_is_smaller_and_matches(family, tmp_path):
    from edgecompress.export import check_parity, export_onnx

    model = _model(family)
    x = torch.randn(2, *SHAPE)
    export_onnx(model, x, tmp_path / "full.onnx")
    _prune(model, "target_macs_ratio", 0.5)
    save_pruned(model, x, tmp_path / "p.pt2", tmp_path / "p.pt")
    reloaded = load_pruned(tmp_path / "p.pt2")
    reloaded.eval()  # a raw ExportedProgram.module() would raise here
    assert count_params(reloaded) == count_params(model)
    assert count_macs(reloaded, SHAPE) == count_macs(model, SHAPE)
    export_onnx(reloaded, x, tmp_path / "pruned.onnx")
    data = np.random.default_rng(0).normal(size=(40, *SHAPE)).astype(np.float32)
    assert check_parity(reloaded, tmp_path / "pruned.onnx", data).top1_agreement == 1.0
    assert _onnx_params(tmp_path / "pruned.onnx") < 0.8 * _onnx_params(tmp_path / "full.onnx")


def test_pt2_reloads_in_a_fresh_process_without_edgecompress_models(tmp_path):
    model = _model("mobilenet")
    _prune(model, "ratio", 0.5)
    x = torch.randn(3, *SHAPE)
    save_pruned(model, x[:2], tmp_path / "p.pt2", tmp_path / "p.pt")
    torch.save(x, tmp_path / "x.pt")
    code = ("import sys, torch\n"
            f"m = torch.export.load({str(tmp_path / 'p.pt2')!r}).module()\n"
            f"torch.save(m(torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'y.pt')!r})\n"
            "print(sorted(k for k in sys.modules if k.startswith('edgecompress')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
    with torch.no_grad():
        assert torch.allclose(torch.load(tmp_path / "y.pt"), model(x), atol=1e-5)


def _group_scores(model: nn.Module, criterion: str) -> torch.Tensor:
    importance = make_importance(criterion)
    if criterion == "taylor":
        rng = np.random.default_rng(0)
        x = rng.normal(size=(32, *SHAPE)).astype(np.float32)
        y = rng.integers(0, 10, size=32)
        accumulate_gradients(model, lambda out, yb, _: nn.functional.cross_entropy(out, yb), x,
                             y, batches=2, batch_size=16, seed=0)
    graph = ChannelGraph(model, torch.randn(1, *SHAPE), [model.classifier], importance)
    (group,) = [g for g in graph.groups if g.name == "stage3.0.conv1"]
    return group.importance


@pytest.mark.parametrize("criterion", ["l1", "l2", "taylor", "fpgm"])
def test_each_importance_ranks_the_redundant_channel_last(criterion):
    model = _model("resnet")
    block = model.stage3[0]
    with torch.no_grad():
        if criterion == "fpgm":  # the channel nearest the others' centre is the redundant one
            block.conv1.weight[5] = block.conv1.weight.pow(2).mean(0).sqrt()
            block.conv2.weight[:, 5] = block.conv2.weight.pow(2).mean(1).sqrt()
        else:  # a dead channel: zero weights, so zero norm and zero Taylor term
            block.conv1.weight[5] = 0
            block.bn1.weight[5] = 0
            block.conv2.weight[:, 5] = 0
    scores = _group_scores(model, criterion)
    assert scores.shape == (64,) and torch.isfinite(scores).all()
    assert int(scores.argmin()) == 5
    _prune(model, "ratio", 0.25, importance=criterion)
    assert block.conv1.out_channels == 48
    assert model(torch.randn(2, *SHAPE)).shape == (2, 10)


def test_plans_round_and_stay_in_the_window():
    groups = [GroupPlanInput("a", 16, 16, torch.arange(16.0)),
              GroupPlanInput("b", 64, 64, torch.arange(64.0))]
    assert ratio_plan(groups, 0.3, 8) == {"a": 8, "b": 48}  # nearest multiple, at least one block

    def cost(keep):
        return 10 * keep["a"] + keep["b"]

    plan = budget_plan(groups, cost, 0.5 * cost({"a": 16, "b": 64}), 8)
    assert all(v % 8 == 0 and v >= 8 for v in plan.values())
    assert 0.45 * 224 <= cost(plan) <= 0.5 * 224


@pytest.mark.parametrize("prune, key", [
    ({"enabled": True, "ratio": 0.5, "target_macs_ratio": 0.5}, "only one of"),
    ({"enabled": True, "ratio": 1.5}, "stages.prune.ratio"),
    ({"enabled": True, "target_params_ratio": 0}, "stages.prune.target_params_ratio"),
    ({"enabled": True, "ratio": 0.5, "importance": "l3"}, "stages.prune.importance"),
    ({"enabled": True}, "needs one of ratio"),
    ({"enabled": True, "ratio": 0.5, "round_to": 0}, "stages.prune.round_to"),
])
def test_bad_prune_config_names_the_key(prune, key):
    with pytest.raises(ConfigError, match=key):
        parse_recipe({"stages": {"prune": prune}})


@pytest.mark.parametrize("prune, key", [
    ({"ignored_layers": ["stage9"]}, "stages.prune.ignored_layers: student has no layer 'stage9'"),
    ({"target_macs_ratio": 0.01}, "stages.prune.target_macs_ratio: 0.01 is below"),
])
def test_bad_prune_setup_fails_before_training(write_recipe, tmp_path, prune, key):
    prune = {"enabled": True, "ratio": 0.5, **prune}
    if "target_macs_ratio" in prune:
        del prune["ratio"]
    recipe = load_recipe(write_recipe({"stages": {"prune": prune}}))
    with pytest.raises(ConfigError, match=key):
        Pipeline(recipe, tmp_path / "run").run()
    assert not (tmp_path / "run").exists()


def test_pipeline_with_pruning_reports_the_pruned_student(write_recipe, tmp_path):
    recipe = load_recipe(write_recipe({
        "student": {"family": "mobilenet", "width": 0.5},
        "stages": {"prune": {"enabled": True, "target_params_ratio": 0.6, "steps": 2,
                             "recovery_epochs": 2, "importance": "taylor"}}}))
    out = tmp_path / "run"
    status = Pipeline(recipe, out).run()
    assert status["prune"] == "ran"
    metrics = read_stage_manifest(out, "prune")["metrics"]
    assert [s["goal"] for s in metrics["steps"]] == [0.8, 0.6]
    assert metrics["steps"][0]["params_ratio"] <= 0.8
    assert 0.54 <= metrics["params_ratio"] <= 0.6 and metrics["within_tolerance"]
    assert metrics["reload_max_abs_diff"] <= 1e-4
    assert metrics["plan"] == recipe.stages.prune.plan
    channels = metrics["channels"]  # every group: [original, kept]
    assert all(0 < kept <= original for original, kept in channels.values())
    assert metrics["groups_changed"] == sum(o != k for o, k in channels.values()) > 0
    changed = {name for step in metrics["steps"] for name in step["groups"]}
    assert changed == {name for name, (o, k) in channels.items() if o != k}
    assert "channel groups thinned" in (out / "report.md").read_text()
    report = json.loads((out / "report.json").read_text())
    assert report["student"]["params"] == metrics["params_after"] < metrics["params_before"]
    assert report["student"]["macs"] == metrics["macs_after"]
    assert report["student"]["accuracy_fp32"] == metrics["test_accuracy"]
    assert [s["name"] for s in report["stages"]].count("prune") == 1
    assert report["targets"][0]["status"] == "ok"
    assert report["targets"][0]["parity"]["top1_agreement"] >= 0.99
    assert (out / "prune" / "student.pt2").is_file()
    assert set(Pipeline(recipe, out).run().values()) == {"skipped"}  # resumes like any stage


def test_disabled_prune_is_a_no_op(write_recipe, tmp_path):
    from edgecompress.distributed import DistInfo
    from edgecompress.stages.base import Context
    from edgecompress.stages.common import final_student_source
    from edgecompress.stages.student import PruneStage

    ctx = Context(load_recipe(write_recipe()), tmp_path, DistInfo(0, 1, 0, torch.device("cpu")))
    stage = PruneStage()
    assert stage.config(ctx) == {"enabled": False} and stage.inputs(ctx) == {}
    assert stage.run(ctx).outputs == {}
    assert not (tmp_path / "prune").exists()
    assert final_student_source(ctx) == tmp_path / "distill" / "student.pt"
