"""``features: auto``: layer pairing from output shapes (CNN stage ends by spatial size, other
blocks by depth), its recipe form, and a real distill run that uses the pairs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from edgecompress.errors import ConfigError
from edgecompress.models.tiny import build_builtin
from edgecompress.pipeline import Pipeline, read_stage_manifest
from edgecompress.recipe import FeatureMatch, load_recipe, parse_recipe
from edgecompress.stages.data import DataStage
from edgecompress.stages.feature_match import match_layers, trace_candidates
from edgecompress.stages.losses import FeatureTaps, feature_mse, make_projection
from edgecompress.stages.student import DistillStage
from edgecompress.stages.teacher import TeacherStage


def _pairs(matches: list[FeatureMatch]) -> list[tuple[str, str]]:
    return [(m.teacher, m.student) for m in matches]


def _mlp(*sizes: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


def _feature_step(teacher: nn.Module, student: nn.Module, pairs: list[FeatureMatch],
                  x: torch.Tensor) -> torch.Tensor:
    """One training-mode forward/backward of the feature terms, as the distill stage does."""
    t_taps = FeatureTaps(teacher, [p.teacher for p in pairs], "teacher")
    s_taps = FeatureTaps(student, [p.student for p in pairs], "student")
    try:
        with torch.no_grad():
            teacher.eval()(x)
        student.train()(x)
        loss = sum(feature_mse(make_projection(s_taps.outputs[p.student],
                                               t_taps.outputs[p.teacher])(
                                   s_taps.outputs[p.student]), t_taps.outputs[p.teacher])
                   for p in pairs)
        loss.backward()
    finally:
        t_taps.remove()
        s_taps.remove()
    return loss


def test_builtin_cnns_pair_their_stage_ends_by_spatial_size():
    torch.manual_seed(0)
    teacher = build_builtin("resnet", num_classes=10, in_channels=1, width=0.5, depth=2)
    student = build_builtin("mobilenet", num_classes=10, in_channels=1, width=0.25, depth=1)
    x = torch.randn(2, 1, 8, 8)
    spatial, _ = trace_candidates(student, x)
    # stage ends, not the expansion conv of the next (strided) block that still runs at 8x8
    assert [(c.name, c.shape[-2:]) for c in spatial] == [
        ("stage1", (8, 8)), ("stage2", (4, 4)), ("stage3", (2, 2))]
    assert _pairs(match_layers(teacher, student, x)) == [
        ("stage1", "stage1"), ("stage2", "stage2"), ("stage3", "stage3")]
    two = match_layers(teacher, student, x, count=2, weight=0.5)
    assert _pairs(two) == [("stage2", "stage2"), ("stage3", "stage3")]
    assert all(m.weight == 0.5 for m in two)
    assert teacher.training and student.training  # modes restored


def test_torchvision_resnet18_to_mobilenet_v2_at_32x32_pairs_and_trains():
    from torchvision.models import mobilenet_v2, resnet18

    torch.manual_seed(0)
    teacher, student = resnet18(num_classes=10), mobilenet_v2(num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    pairs = match_layers(teacher, student, x, count=4)
    assert _pairs(pairs) == [("relu", "features.1"), ("layer1", "features.3"),
                             ("layer2", "features.6"), ("layer3", "features.13")]
    # in-place ReLUs must not break the backward pass through the taps
    loss = _feature_step(teacher, student, pairs, x)
    assert math.isfinite(loss.item()) and loss.item() > 0
    assert student.features[3].conv[0][0].weight.grad.abs().sum() > 0
    # and the other way round: the student's 1x1 layer4 map is left out (a pooled vector)
    assert _pairs(match_layers(student, teacher, x)) == [
        ("features.3", "layer1"), ("features.6", "layer2"), ("features.13", "layer3")]


class _Odd(nn.Module):
    """Blocks a tap must skip: a tuple output, an integer output, a module run twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.shared = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.shared(self.conv1(x))
        b = self.shared(self.conv2(a))
        return self.head(b.mean((2, 3)))


def test_skips_reused_modules_and_non_tensor_outputs():
    spatial, _ = trace_candidates(_Odd(), torch.randn(2, 1, 8, 8))
    names = [c.name for c in spatial]
    # shared runs twice (which output would a tap hold?), so the 8x8 stage end has no usable
    # name; conv2 is the last map (reduced by a function, not a module)
    assert names == ["conv2"]

    class Tuple(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.pool = nn.MaxPool2d(2, return_indices=True)
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            y, _ = self.pool(self.conv(x))
            return self.head(y.mean((2, 3)))

    spatial, _ = trace_candidates(Tuple(), torch.randn(2, 1, 8, 8))
    assert [c.name for c in spatial] == ["conv"]  # pool returns a tuple: never a candidate


class _Encoder(nn.Module):
    def __init__(self, layers: int, dim: int) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(dim, 4, 2 * dim, batch_first=True), layers,
            enable_nested_tensor=False)
        self.head = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(1))


def test_sequence_models_pair_blocks_by_depth_fraction():
    torch.manual_seed(0)
    teacher, student = _Encoder(4, 32), _Encoder(2, 16)
    x = torch.randn(2, 6, 8)
    _, seq = trace_candidates(teacher, x)
    assert [c.name for c in seq] == [f"encoder.layers.{i}" for i in range(4)]
    pairs = match_layers(teacher, student, x)
    assert _pairs(pairs) == [("encoder.layers.1", "encoder.layers.0"),
                             ("encoder.layers.3", "encoder.layers.1")]
    loss = _feature_step(teacher, student, pairs, x)
    assert math.isfinite(loss.item())


def test_mlps_pair_hidden_activations():
    pairs = match_layers(_mlp(196, 512, 512, 10), _mlp(196, 32, 10), torch.randn(2, 1, 14, 14))
    # the student's ReLU (depth 1/2) to the teacher's deeper ReLU on the tie (1/3 vs 2/3)
    assert _pairs(pairs) == [("4", "2")]


def test_no_pair_is_a_config_error_listing_both_models_candidates():
    teacher = build_builtin("resnet", num_classes=10, in_channels=1, width=0.5)
    with pytest.raises(ConfigError) as err:
        match_layers(teacher, _mlp(64, 32, 10), torch.randn(2, 1, 8, 8))
    text = str(err.value)
    assert "no teacher/student layer pair" in text
    assert "stage3 (64, 2, 2)" in text and "2 (32,)" in text


def test_recipe_accepts_auto_and_rejects_bad_values():
    cfg = parse_recipe({"stages": {"distill": {"features": "auto", "feature_pairs": 2,
                                               "feature_weight": 0.5}}}).stages.distill
    assert (cfg.features, cfg.feature_pairs, cfg.feature_weight) == ("auto", 2, 0.5)
    assert parse_recipe({}).stages.distill.features == []  # off by default
    explicit = parse_recipe({"stages": {"distill": {"features": [
        {"teacher": "stage3", "student": "stage3"}]}}}).stages.distill.features
    assert explicit == [FeatureMatch(teacher="stage3", student="stage3")]
    with pytest.raises(ConfigError, match=r"stages.distill.features: .*'auto' or a list.*"
                                          r"'automatic'"):
        parse_recipe({"stages": {"distill": {"features": "automatic"}}})
    with pytest.raises(ConfigError, match=r"feature_pairs only apply to features: auto"):
        parse_recipe({"stages": {"distill": {"feature_pairs": 2}}})
    # A dumped recipe (every field written, defaults included) parses again.
    from edgecompress.recipe import recipe_to_dict

    dumped = recipe_to_dict(parse_recipe({}))
    assert recipe_to_dict(parse_recipe(dumped)) == dumped
    with pytest.raises(ConfigError, match=r"stages.distill.feature_pairs"):
        parse_recipe({"stages": {"distill": {"features": "auto", "feature_pairs": 0}}})


def test_distill_stage_with_auto_features_records_the_pairs_and_trains(write_recipe, tmp_path):
    recipe = load_recipe(write_recipe({
        "stages": {"distill": {"features": "auto", "feature_pairs": 2, "epochs": 3}}}))
    out = tmp_path / "run"
    Pipeline(recipe, out, stages=[DataStage(), TeacherStage("finetune"), DistillStage()]).run()
    metrics = read_stage_manifest(out, "distill")["metrics"]
    assert metrics["feature_pairs"] == [
        {"teacher": "stage2", "student": "stage2", "weight": 0.1},
        {"teacher": "stage3", "student": "stage3", "weight": 0.1}]
    history = metrics["student"]["history"]
    assert len(history) == 3 and all(math.isfinite(h["train_loss"]) for h in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert metrics["student"]["test_accuracy"] > 0.3
