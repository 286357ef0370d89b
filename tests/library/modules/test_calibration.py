"""Tests of the defect-guided calibration loss (eq. 7-8): ``torch_arcad.functional.defect_guided_loss`` and the
module ``DefectGuidedLoss``.

The reference is eq. 8 as printed: for each l2-normalised anomaly (eq. 7) the largest prototype similarity plus
one minus the mean similarity to every synthetic anomaly, i.e. the double sum over all anomaly-synthetic pairs.
"""

from __future__ import annotations

import pytest
import torch

from torch_arcad import DefectGuidedLoss
from torch_arcad.functional import defect_guided_loss

TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


def unit_rows(n: int, d: int, g: torch.Generator) -> torch.Tensor:
    x = torch.randn(n, d, generator=g)
    return x / x.norm(dim=1, keepdim=True)


def eq8_terms(anomalies, prototypes, synthetic, clamp_push=False, margin=None):
    """Per-anomaly terms of eq. 8 with eq. 7's normalisation, written as the literal loops, float64; ``margin``:
    the push that stops short, ``max(push - margin, 0)``."""
    a_hat = [a / a.norm() for a in anomalies.double()]  # eq. 7
    mu = prototypes.double()
    syn = synthetic.double()
    terms = []
    for a in a_hat:
        push = max(a @ mu[k] for k in range(mu.shape[0]))
        if clamp_push:
            push = torch.clamp(push, min=0)
        if margin is not None:
            push = torch.clamp(push - margin, min=0)
        pull = 1 - sum(a @ syn[s] for s in range(syn.shape[0])) / syn.shape[0]
        terms.append(push + pull)
    return torch.stack(terms)


def case(m=6, s=7, k=4, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    # anomalies NOT normalised: radii between 0.5 and 5
    anomalies = torch.randn(m, d, generator=g) * (torch.rand(m, 1, generator=g) * 4.5 + 0.5)
    return anomalies, unit_rows(k, d, g), unit_rows(s, d, g)


def test_matches_literal_double_sum_in_value_and_gradient():
    anomalies, prototypes, synthetic = case(seed=1)
    assert not torch.allclose(anomalies.norm(dim=1), torch.ones(6))
    a32, s32 = anomalies.clone().requires_grad_(True), synthetic.clone().requires_grad_(True)
    loss = defect_guided_loss(a32, prototypes, s32)
    a64, s64 = anomalies.double().requires_grad_(True), synthetic.double().requires_grad_(True)
    expected = eq8_terms(a64, prototypes, s64).mean()
    assert loss.dtype == torch.float32 and loss.dim() == 0
    torch.testing.assert_close(loss.double(), expected.detach(), **TOLERANCE)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(a32.grad.double(), a64.grad, **TOLERANCE)
    torch.testing.assert_close(s32.grad.double(), s64.grad, **TOLERANCE)


def test_reductions():
    anomalies, prototypes, synthetic = case(seed=2)
    terms = eq8_terms(anomalies, prototypes, synthetic)
    none = defect_guided_loss(anomalies, prototypes, synthetic, reduction="none")
    assert none.shape == (6,)
    torch.testing.assert_close(none.double(), terms, **TOLERANCE)
    torch.testing.assert_close(
        defect_guided_loss(anomalies, prototypes, synthetic, reduction="sum").double(), terms.sum(), **TOLERANCE
    )


def opposed_case():
    # anomalies near -mu_0 with K = 2 prototypes on the same axis side: every push term is negative, and the
    # synthetic set sits close to the anomalies, so push + pull < 0 as well
    g = torch.Generator().manual_seed(3)
    d = 6
    mu = torch.zeros(2, d)
    mu[0, 0] = 1.0
    mu[1, :2] = torch.tensor([0.6, 0.8])
    anomalies = -mu[0] * 2.0 + 0.1 * torch.randn(5, d, generator=g)
    synthetic = -mu[0] + 0.05 * torch.randn(4, d, generator=g)
    synthetic = synthetic / synthetic.norm(dim=1, keepdim=True)
    return anomalies, mu, synthetic


def test_clamp_push_applies_relu_to_the_push_term_only():
    anomalies, mu, synthetic = opposed_case()
    plain = eq8_terms(anomalies, mu, synthetic)
    clamped = eq8_terms(anomalies, mu, synthetic, clamp_push=True)
    assert (plain < 0).all()  # relu on the whole term would give 0 here
    assert (clamped > 0).all()
    torch.testing.assert_close(defect_guided_loss(anomalies, mu, synthetic).double(), plain.mean(), **TOLERANCE)
    torch.testing.assert_close(
        defect_guided_loss(anomalies, mu, synthetic, clamp_push=True).double(), clamped.mean(), **TOLERANCE
    )


def test_clamp_push_matches_reference_on_random_data():
    anomalies, prototypes, synthetic = case(m=20, k=2, d=3, seed=4)
    clamped = eq8_terms(anomalies, prototypes, synthetic, clamp_push=True)
    assert (eq8_terms(anomalies, prototypes, synthetic) != clamped).any()
    torch.testing.assert_close(
        defect_guided_loss(anomalies, prototypes, synthetic, clamp_push=True).double(), clamped.mean(), **TOLERANCE
    )


@pytest.mark.parametrize("clamp_push", [False, True])
def test_similarities_path_equals_matmul_path(clamp_push):
    anomalies, prototypes, synthetic = case(seed=5)
    a1, a2 = anomalies.clone().requires_grad_(True), anomalies.clone().requires_grad_(True)
    s1, s2 = synthetic.clone().requires_grad_(True), synthetic.clone().requires_grad_(True)
    similarities = (a2 / a2.norm(dim=1, keepdim=True)) @ prototypes.t()  # the caller's differentiable matmul
    direct = defect_guided_loss(a1, prototypes, s1, clamp_push=clamp_push)
    shared = defect_guided_loss(a2, prototypes, s2, clamp_push=clamp_push, similarities=similarities)
    torch.testing.assert_close(shared, direct)
    direct.backward()
    shared.backward()
    torch.testing.assert_close(a2.grad, a1.grad)
    torch.testing.assert_close(s2.grad, s1.grad)


def test_anomaly_weight_masks_and_weights():
    anomalies, prototypes, synthetic = case(m=8, seed=6)
    keep = torch.tensor([1, 0, 1, 1, 0, 1, 0, 1], dtype=torch.bool)
    masked = defect_guided_loss(anomalies, prototypes, synthetic, anomaly_weight=keep.float())
    torch.testing.assert_close(masked, defect_guided_loss(anomalies[keep], prototypes, synthetic))

    terms = eq8_terms(anomalies, prototypes, synthetic)
    weight = torch.linspace(0.2, 2.0, 8)
    weighted = defect_guided_loss(anomalies, prototypes, synthetic, anomaly_weight=weight)
    torch.testing.assert_close(weighted.double(), (weight.double() * terms).sum() / weight.double().sum(), **TOLERANCE)
    weighted_sum = defect_guided_loss(anomalies, prototypes, synthetic, anomaly_weight=weight, reduction="sum")
    torch.testing.assert_close(weighted_sum.double(), (weight.double() * terms).sum(), **TOLERANCE)


def test_synthetic_weight_masks_the_synthetic_set():
    anomalies, prototypes, synthetic = case(s=9, seed=7)
    keep = torch.tensor([1, 1, 0, 1, 0, 0, 1, 1, 0], dtype=torch.bool)
    masked = defect_guided_loss(anomalies, prototypes, synthetic, synthetic_weight=keep.float())
    torch.testing.assert_close(masked.double(), eq8_terms(anomalies, prototypes, synthetic[keep]).mean(), **TOLERANCE)


def test_synthetic_weight_is_a_weighted_mean():
    anomalies, prototypes, synthetic = case(s=4, seed=8)
    weight = torch.tensor([3.0, 1.0, 0.5, 1.5])
    loss = defect_guided_loss(anomalies, prototypes, synthetic, synthetic_weight=weight)
    a = anomalies.double() / anomalies.double().norm(dim=1, keepdim=True)
    push = (a @ prototypes.double().t()).amax(dim=1)
    pull = 1 - (a @ synthetic.double().t() * weight.double()).sum(dim=1) / weight.double().sum()
    torch.testing.assert_close(loss.double(), (push + pull).mean(), **TOLERANCE)


@pytest.mark.parametrize("with_similarities", [False, True])
def test_no_anomalies_gives_a_zero_that_backpropagates(with_similarities):
    _, prototypes, synthetic = case(seed=9)
    anomalies = torch.zeros(0, 5, requires_grad=True)
    synthetic = synthetic.clone().requires_grad_(True)
    kwargs = {"similarities": torch.zeros(0, 4)} if with_similarities else {}
    loss = defect_guided_loss(anomalies, prototypes, synthetic, **kwargs)
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert anomalies.grad is not None and anomalies.grad.shape == (0, 5)
    assert torch.equal(synthetic.grad, torch.zeros_like(synthetic))


def test_prototypes_receive_no_gradient():
    anomalies, prototypes, synthetic = case(seed=10)
    prototypes = prototypes.clone().requires_grad_(True)
    anomalies = anomalies.clone().requires_grad_(True)
    for kwargs in ({}, {"similarities": anomalies.detach() @ prototypes.detach().t()}):
        defect_guided_loss(anomalies, prototypes, synthetic, **kwargs).backward()
        assert prototypes.grad is None
        assert anomalies.grad is not None


def test_loss_is_invariant_to_anomaly_radius():
    anomalies, prototypes, synthetic = case(seed=11)
    scale = torch.rand(6, 1) * 10 + 0.1
    torch.testing.assert_close(
        defect_guided_loss(anomalies * scale, prototypes, synthetic), defect_guided_loss(anomalies, prototypes, synthetic)
    )


def test_float32_under_autocast():
    anomalies, prototypes, synthetic = case(seed=12)
    reference = defect_guided_loss(anomalies, prototypes, synthetic)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = defect_guided_loss(anomalies, prototypes, synthetic)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference)


@pytest.mark.parametrize(
    ("shapes", "kwargs"),
    [
        (((5,), (3, 5), (4, 5)), {}),
        (((6, 5), (3, 4), (4, 5)), {}),
        (((6, 5), (3, 5), (4, 4)), {}),
        (((6, 5), (5,), (4, 5)), {}),
        (((6, 5), (3, 5), (4, 5)), {"similarities": torch.zeros(6, 4)}),
        (((6, 5), (3, 5), (4, 5)), {"reduction": "avg"}),
    ],
)
def test_bad_input_raises_value_error(shapes, kwargs):
    anomalies, prototypes, synthetic = (torch.randn(s) for s in shapes)
    with pytest.raises(ValueError):
        defect_guided_loss(anomalies, prototypes, synthetic, **kwargs)


# ------------------------------------------------------------------------------------------------- module


@pytest.mark.parametrize("clamp_push", [False, True])
def test_module_equals_function(clamp_push):
    anomalies, prototypes, synthetic = opposed_case()
    aw = torch.tensor([1.0, 0.0, 2.0, 1.0, 1.0])
    sw = torch.tensor([1.0, 1.0, 0.0, 2.0])
    module = DefectGuidedLoss(clamp_push=clamp_push)
    loss = module(anomalies, prototypes, synthetic, anomaly_weight=aw, synthetic_weight=sw)
    expected = defect_guided_loss(
        anomalies, prototypes, synthetic, anomaly_weight=aw, synthetic_weight=sw, clamp_push=clamp_push
    )
    assert torch.equal(loss, expected)
    a = anomalies / anomalies.norm(dim=1, keepdim=True)
    push = (a @ prototypes.t()).amax(dim=1)
    push = push.clamp_min(0) if clamp_push else push
    pull = 1 - a @ ((sw[:, None] * synthetic).sum(0) / sw.sum())
    torch.testing.assert_close(loss, ((push + pull) * aw).sum() / aw.sum())
    assert list(module.parameters()) == []


def test_module_default_is_the_paper_without_clamp():
    anomalies, prototypes, synthetic = opposed_case()
    torch.testing.assert_close(
        DefectGuidedLoss()(anomalies, prototypes, synthetic).double(),
        eq8_terms(anomalies, prototypes, synthetic).mean(),
        **TOLERANCE,
    )
