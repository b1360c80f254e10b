"""Distillation losses: the formula, the T^2 scaling, and feature matching through projections."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgecompress.errors import ConfigError
from edgecompress.stages.losses import (
    FeatureTaps,
    distillation_loss,
    feature_mse,
    kd_loss,
    make_projection,
)


def test_kd_loss_matches_the_formula():
    torch.manual_seed(0)
    s, t = torch.randn(5, 10), torch.randn(5, 10)
    temperature = 3.0
    p_t = F.softmax(t / temperature, 1)
    p_s = F.softmax(s / temperature, 1)
    expected = (p_t * (p_t.log() - p_s.log())).sum(1).mean() * temperature**2
    assert kd_loss(s, t, temperature).item() == pytest.approx(expected.item(), rel=1e-5)


def test_kd_loss_is_zero_for_identical_logits():
    z = torch.randn(4, 7)
    assert kd_loss(z, z.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_alpha_mixes_soft_and_hard_terms():
    torch.manual_seed(1)
    s, t, y = torch.randn(6, 4), torch.randn(6, 4), torch.randint(0, 4, (6,))
    hard = F.cross_entropy(s, y)
    soft = kd_loss(s, t, 2.0)
    mixed = distillation_loss(s, t, y, alpha=0.25, temperature=2.0)
    assert mixed.item() == pytest.approx((0.25 * soft + 0.75 * hard).item(), rel=1e-5)
    assert distillation_loss(s, t, y, alpha=0.0, temperature=2.0).item() == \
        pytest.approx(hard.item())
    assert distillation_loss(s, None, y, alpha=0.9, temperature=2.0).item() == \
        pytest.approx(hard.item())


def test_feature_taps_projection_and_mse():
    teacher = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU())
    student = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1, stride=2),
                                  torch.nn.ReLU())
    t_taps = FeatureTaps(teacher, ["0"], "teacher")
    s_taps = FeatureTaps(student, ["0"], "student")
    x = torch.randn(2, 1, 8, 8)
    teacher(x)
    student(x)
    proj = make_projection(s_taps.outputs["0"], t_taps.outputs["0"])
    assert isinstance(proj, torch.nn.Conv2d) and proj.out_channels == 16
    loss = feature_mse(proj(s_taps.outputs["0"]), t_taps.outputs["0"])  # 4x4 vs 8x8 resized
    assert loss.item() > 0
    loss.backward()
    assert proj.weight.grad is not None
    t_taps.remove()
    teacher(x)
    assert len(t_taps.outputs) == 1  # no hook left to refresh it... but old value kept
    with pytest.raises(ConfigError, match="has no layer 'nope'"):
        FeatureTaps(student, ["nope"], "student")
    with pytest.raises(ConfigError, match="cannot match"):
        make_projection(torch.randn(2, 4, 3, 3), torch.randn(2, 8))
