"""Tests of ``torch_arcad.FocalDiscriminator`` (section 3.4, eq. 9).

The references transcribe the MLP (``Linear -> LeakyReLU(0.2) -> Linear(no bias)``) from the module's own weights
and torchvision's ``sigmoid_focal_loss`` formula in float64.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torch_arcad import FocalDiscriminator

TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


def focal_elements(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """torchvision's ``sigmoid_focal_loss`` (reduction none), float64."""
    x, y = logits.double(), targets.double()
    p = torch.sigmoid(x)
    ce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
    p_t = p * y + (1 - p) * (1 - y)
    alpha_t = alpha * y + (1 - alpha) * (1 - y)
    return alpha_t * ce * (1 - p_t) ** gamma


def mlp_transcription(module: FocalDiscriminator, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode forward written out from the module's weights, float64 (norm="none")."""
    first, last = module.net[0], module.net[-1]
    h = x.double() @ first.weight.double().t() + first.bias.double()
    h = torch.where(h > 0, h, 0.2 * h)
    return (h @ last.weight.double().t()).squeeze(1)


def groups(n=6, s=5, m=3, d=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(s, d, generator=g), torch.randn(m, d, generator=g)


def make(dim=9, seed=0, **kwargs) -> FocalDiscriminator:
    torch.manual_seed(seed)
    module = FocalDiscriminator(dim, **kwargs)
    with torch.no_grad():  # larger weights than the default init, so the logits are spread out
        for p in module.parameters():
            p.mul_(3)
    return module


def test_forward_gives_one_logit_per_row_and_matches_the_mlp():
    module = make()
    x = torch.randn(7, 9)
    logits = module(x)
    assert logits.shape == (7,)
    torch.testing.assert_close(logits.double(), mlp_transcription(module, x), **TOLERANCE)


def test_architecture_and_default_hidden_width():
    module = FocalDiscriminator(768)
    linears = [layer for layer in module.modules() if isinstance(layer, nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linears] == [(768, 512), (512, 1)]
    assert linears[0].bias is not None and linears[1].bias is None
    activations = [layer for layer in module.modules() if isinstance(layer, nn.LeakyReLU)]
    assert len(activations) == 1 and activations[0].negative_slope == 0.2
    assert not any(isinstance(layer, nn.BatchNorm1d) for layer in module.modules())


@pytest.mark.parametrize("dim", [1, 2, 3, 10, 256, 2048])
def test_default_hidden_is_int_dim_over_1_5(dim):
    module = FocalDiscriminator(dim)
    assert module.net[0].out_features == max(1, int(dim / 1.5))


def test_explicit_hidden_dim():
    module = FocalDiscriminator(12, hidden_dim=5)
    assert module.net[0].out_features == 5
    assert module(torch.randn(3, 12)).shape == (3,)


def test_batch_norm_option():
    module = FocalDiscriminator(12, norm="batch")
    norms = [layer for layer in module.modules() if isinstance(layer, nn.BatchNorm1d)]
    assert len(norms) == 1 and norms[0].num_features == int(12 / 1.5)
    x = torch.randn(16, 12)
    module.train()
    logits = module(x)
    # training mode normalises with the batch's statistics: the transcription with BN written out
    first, bn, last = module.net[0], norms[0], module.net[-1]
    h = x @ first.weight.t() + first.bias
    h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + bn.eps) * bn.weight + bn.bias
    torch.testing.assert_close(logits, F.leaky_relu(h, 0.2) @ last.weight.t().squeeze(1), **TOLERANCE)


def test_batch_of_one_in_eval_mode():
    module = FocalDiscriminator(6, norm="batch")
    module.train()
    module(torch.randn(8, 6))  # some running statistics
    module.eval()
    out = module(torch.randn(1, 6))
    assert out.shape == (1,)
    assert torch.isfinite(out).all()


def union_reference(module, normal, synthetic, anomalies, weights=(None, None, None)):
    """Eq. 9 as printed: one expectation over Z u A_syn u A_hat with labels 0, 1, 1."""
    x = torch.cat([normal, synthetic, anomalies])
    y = torch.cat([torch.zeros(len(normal)), torch.ones(len(synthetic)), torch.ones(len(anomalies))])
    w = torch.cat([torch.ones(len(t)) if wt is None else wt for t, wt in zip((normal, synthetic, anomalies), weights)])
    per = focal_elements(mlp_transcription(module, x), y, module.alpha, module.gamma)
    return (per * w.double()).sum() / w.double().sum()


def balanced_reference(module, normal, synthetic, anomalies):
    """The released code: 0.5 (FL_normal + FL_synthetic) + FL_real, each a mean (an empty group gives 0)."""
    def mean_fl(x, label):
        if len(x) == 0:
            return torch.zeros((), dtype=torch.float64)
        return focal_elements(mlp_transcription(module, x), torch.full((len(x),), label), module.alpha, module.gamma).mean()

    return 0.5 * (mean_fl(normal, 0.0) + mean_fl(synthetic, 1.0)) + mean_fl(anomalies, 1.0)


REFERENCES = {"union": lambda *a: union_reference(*a), "balanced": lambda *a: balanced_reference(*a)}


@pytest.mark.parametrize(("alpha", "gamma"), [(0.75, 2.0), (0.25, 1.0), (0.5, 0.0)])
def test_union_loss_matches_eq9(alpha, gamma):
    module = make(alpha=alpha, gamma=gamma)
    normal, synthetic, anomalies = groups(seed=1)
    loss = module.loss(normal, synthetic, anomalies)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    torch.testing.assert_close(loss.double(), union_reference(module, normal, synthetic, anomalies), **TOLERANCE)


def test_balanced_loss_matches_released_code_weighting():
    module = make(weighting="balanced")
    normal, synthetic, anomalies = groups(n=10, s=4, m=2, seed=2)
    loss = module.loss(normal, synthetic, anomalies)
    torch.testing.assert_close(loss.double(), balanced_reference(module, normal, synthetic, anomalies), **TOLERANCE)
    # and it differs from the union mean for unequal group sizes
    assert not torch.allclose(loss.double(), union_reference(module, normal, synthetic, anomalies), atol=1e-4)


def test_default_weighting_is_union_with_alpha_075_gamma_2():
    module = make()
    assert (module.alpha, module.gamma, module.weighting) == (0.75, 2.0, "union")


@pytest.mark.parametrize("weighting", ["union", "balanced"])
def test_empty_anomalies(weighting):
    module = make(weighting=weighting)
    normal, synthetic, _ = groups(seed=3)
    anomalies = torch.zeros(0, 9)
    loss = module.loss(normal, synthetic, anomalies)
    assert torch.isfinite(loss)
    reference = REFERENCES[weighting]
    torch.testing.assert_close(loss.double(), reference(module, normal, synthetic, anomalies), **TOLERANCE)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in module.parameters())


def test_group_weights_mask_rows():
    module = make()
    normal, synthetic, anomalies = groups(seed=4)
    nw = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    sw = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])
    aw = torch.tensor([1.0, 0.0, 1.0])
    loss = module.loss(normal, synthetic, anomalies, normal_weight=nw, synthetic_weight=sw, anomaly_weight=aw)
    subset = module.loss(normal[nw.bool()], synthetic[sw.bool()], anomalies[aw.bool()])
    torch.testing.assert_close(loss, subset)
    torch.testing.assert_close(
        loss.double(), union_reference(module, normal, synthetic, anomalies, (nw, sw, aw)), **TOLERANCE
    )


def test_group_sums_combine_to_loss():
    for weighting in ("union", "balanced"):
        module = make(weighting=weighting)
        normal, synthetic, anomalies = groups(seed=5)
        logits = module(torch.cat([normal, synthetic, anomalies]))
        targets = torch.tensor([0.0] * 6 + [1.0] * 8)
        weights = torch.block_diag(torch.ones(1, 6), torch.ones(1, 5), torch.ones(1, 3))
        sums, counts = module.group_sums(logits, targets, weights, weights.sum(dim=1))
        torch.testing.assert_close(counts, torch.tensor([6.0, 5.0, 3.0]))
        per_group = [
            focal_elements(lg.double(), torch.full((len(lg),), t), module.alpha, module.gamma).sum()
            for lg, t in zip(logits.split([6, 5, 3]), (0.0, 1.0, 1.0))
        ]
        torch.testing.assert_close(sums.double(), torch.stack(per_group), **TOLERANCE)
        term_sums, term_counts, coefficients = module.combine_groups(sums, counts)
        combined = sum(c * t / n for c, t, n in zip(coefficients, term_sums, term_counts))
        torch.testing.assert_close(combined, module.loss(normal, synthetic, anomalies))
        reference = REFERENCES[weighting]
        torch.testing.assert_close(combined.double(), reference(module, normal, synthetic, anomalies), **TOLERANCE)


def test_gradient_reaches_every_parameter_and_the_features():
    module = make()
    normal, synthetic, anomalies = (t.requires_grad_(True) for t in groups(seed=6))
    module.loss(normal, synthetic, anomalies).backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for t in (normal, synthetic, anomalies):
        assert t.grad is not None and t.grad.abs().sum() > 0

    # the parameter gradients are those of the transcribed eq. 9
    reference = make()
    ref_params = dict(reference.named_parameters())
    loss64 = union_reference(reference, *(t.detach() for t in (normal, synthetic, anomalies)))
    loss64.backward()
    for name, p in module.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, **TOLERANCE)


def test_batch_norm_statistics_are_shared_by_the_three_groups():
    module = make(norm="batch")
    module.train()
    normal, synthetic, anomalies = groups(seed=7)
    loss = module.loss(normal, synthetic, anomalies)
    logits = module(torch.cat([normal, synthetic, anomalies]))
    y = torch.cat([torch.zeros(6), torch.ones(8)])
    torch.testing.assert_close(loss.double(), focal_elements(logits, y, 0.75, 2.0).mean(), **TOLERANCE)


@pytest.mark.parametrize("x", [torch.randn(9), torch.randn(4, 8), torch.randn(2, 4, 9)])
def test_forward_bad_shape_raises_value_error(x):
    with pytest.raises(ValueError):
        make()(x)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_loss_bad_shape_raises_value_error(which):
    parts = list(groups(seed=8))
    parts[which] = parts[which][:, :5]
    with pytest.raises(ValueError):
        make().loss(*parts)


@pytest.mark.parametrize("kwargs", [{"norm": "layer"}, {"weighting": "mean"}])
def test_bad_options_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        FocalDiscriminator(8, **kwargs)


def test_bad_dim_raises_value_error():
    with pytest.raises(ValueError):
        FocalDiscriminator(0)


# ------------------------------------------------------------------------------------------ distance reading


