"""Distillation losses: KD's formula and T^2 scaling, DKD and DIST on hand-checkable cases, and
feature matching through projections."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgecompress.errors import ConfigError
from edgecompress.stages.losses import (
    LOSSES,
    FeatureTaps,
    dist_loss,
    distillation_loss,
    dkd_loss,
    feature_mse,
    kd_loss,
    make_projection,
    soft_loss,
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


def test_dkd_decomposes_classical_kd():
    # Zhao et al. 2022, eq. 7: KD = TCKD + (1 - p_t^target) * NCKD, per sample, same T.
    torch.manual_seed(2)
    s, t, y = torch.randn(1, 6), torch.randn(1, 6), torch.tensor([3])
    temperature = 2.0
    p_target = F.softmax(t / temperature, 1)[0, 3].item()
    decomposed = dkd_loss(s, t, y, temperature, tckd_weight=1.0, nckd_weight=1.0 - p_target)
    assert decomposed.item() == pytest.approx(kd_loss(s, t, temperature).item(), rel=1e-4)
    z = torch.randn(4, 6)
    assert dkd_loss(z, z.clone(), torch.tensor([0, 1, 2, 3]), 4.0).item() == \
        pytest.approx(0.0, abs=1e-5)


def test_dist_on_a_hand_example():
    p_t = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]])
    p_s = p_t.flip(0)  # the two samples swapped
    # Inter-class: each row's Pearson r with the other is -138/186 -> 1 + 138/186.
    # Intra-class: columns 0 and 2 have r = -1, column 1 is constant (r = 0) -> 1 + 2/3.
    expected = (1 + 138 / 186) + (1 + 2 / 3)
    assert dist_loss(p_s.log(), p_t.log(), 1.0).item() == pytest.approx(expected, rel=1e-4)
    # At temperature T the same relations are scaled by T^2.
    assert dist_loss(2 * p_s.log(), 2 * p_t.log(), 2.0).item() == \
        pytest.approx(4 * expected, rel=1e-4)
    z = torch.randn(8, 10)
    assert dist_loss(z, z.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-3)
    # Invariant to a per-sample shift of the logits (softmax is), unlike raw-logit matching.
    assert dist_loss(z + 3.0, z, 1.0).item() == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_mixes_with_hard_labels_and_trains(loss):
    torch.manual_seed(3)
    s = torch.randn(6, 5, requires_grad=True)
    t, y = torch.randn(6, 5), torch.randint(0, 5, (6,))
    soft = soft_loss(s, t, y, loss=loss, temperature=2.0)
    mixed = distillation_loss(s, t, y, alpha=0.3, temperature=2.0, loss=loss)
    assert mixed.item() == pytest.approx((0.3 * soft + 0.7 * F.cross_entropy(s, y)).item(),
                                         rel=1e-5)
    mixed.backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert soft_loss(t, t, y, loss=loss, temperature=2.0).item() < soft.item()


def test_unknown_loss_is_a_config_error():
    z, y = torch.randn(2, 3), torch.tensor([0, 1])
    with pytest.raises(ConfigError, match="unknown distillation loss 'fitnet'"):
        distillation_loss(z, z, y, alpha=0.5, temperature=1.0, loss="fitnet")
