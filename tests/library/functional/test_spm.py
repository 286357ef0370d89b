"""Tests of the prototype functions of ``torch_arcad.functional.prototypes``: eq. 4 (``spm_loss``), spherical
k-means (the prototype initialisation of section 3.2) and the EMA M-step on the sphere."""

from __future__ import annotations

import pytest
import torch

from torch_arcad.functional import ema_prototypes, spherical_kmeans, spm_loss, spm_loss_from_similarities

#: float32 result against a float64 reference
TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


def unit_rows(n: int, d: int, g: torch.Generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return (x / x.norm(dim=1, keepdim=True)).to(dtype)


def row_stochastic(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    w = torch.rand(n, k, generator=g) ** 3
    return w / w.sum(dim=1, keepdim=True)


def spm_transcription(z: torch.Tensor, mu: torch.Tensor, q: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-row terms of eq. 4: -sum_k Q_ik log( exp(z_i.mu_k / tau) / sum_j exp(z_i.mu_j / tau) ), float64."""
    logits = z.double() @ mu.double().t() / tau
    log_ratio = torch.log(torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True))
    return -(q.double() * log_ratio).sum(dim=1)


def case(n=12, k=5, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return unit_rows(n, d, g), unit_rows(k, d, g), row_stochastic(n, k, g)


# ----------------------------------------------------------------------------------------------- spm_loss


@pytest.mark.parametrize("tau", [0.1, 0.05, 1.0])
def test_spm_loss_matches_eq4(tau):
    z, mu, q = case(seed=1)
    loss = spm_loss(z, mu, q, tau)
    expected = spm_transcription(z, mu, q, tau).sum() / z.shape[0]
    assert loss.dtype == torch.float32 and loss.dim() == 0
    torch.testing.assert_close(loss.double(), expected, **TOLERANCE)


def test_spm_loss_default_temperature_is_01():
    z, mu, q = case(seed=2)
    torch.testing.assert_close(spm_loss(z, mu, q).double(), spm_transcription(z, mu, q, 0.1).mean(), **TOLERANCE)


def test_spm_loss_gradient_matches_eq4_and_flows_to_z_only():
    z, mu, q = case(seed=3)
    z32 = z.clone().requires_grad_(True)
    mu32 = mu.clone().requires_grad_(True)
    q32 = q.clone().requires_grad_(True)
    spm_loss(z32, mu32, q32, 0.1).backward()
    assert mu32.grad is None
    assert q32.grad is None

    z64 = z.double().requires_grad_(True)
    spm_transcription(z64, mu, q, 0.1).mean().backward()
    torch.testing.assert_close(z32.grad.double(), z64.grad, **TOLERANCE)
    assert z32.grad.abs().sum() > 0


def test_spm_loss_is_minimal_for_one_hot_on_the_nearest_prototype():
    # cross-entropy: for fixed logits, the best Q is one-hot on the argmax prototype
    z, mu, _ = case(seed=4)
    nearest = (z @ mu.t()).argmax(dim=1)
    one_hot = torch.nn.functional.one_hot(nearest, mu.shape[0]).float()
    uniform = torch.full_like(one_hot, 1 / mu.shape[0])
    assert spm_loss(z, mu, one_hot) < spm_loss(z, mu, uniform)


def test_spm_loss_reductions_and_weights():
    z, mu, q = case(n=10, seed=5)
    per_row = spm_transcription(z, mu, q, 0.1)
    none = spm_loss(z, mu, q, reduction="none")
    assert none.shape == (10,)
    torch.testing.assert_close(none.double(), per_row, **TOLERANCE)
    torch.testing.assert_close(spm_loss(z, mu, q, reduction="sum").double(), per_row.sum(), **TOLERANCE)

    g = torch.Generator().manual_seed(5)
    weight = torch.rand(10, generator=g) * 2
    assert weight.sum() > 1
    weighted = spm_loss(z, mu, q, weight=weight)
    torch.testing.assert_close(weighted.double(), (weight.double() * per_row).sum() / weight.double().sum(), **TOLERANCE)
    weighted_sum = spm_loss(z, mu, q, weight=weight, reduction="sum")
    torch.testing.assert_close(weighted_sum.double(), (weight.double() * per_row).sum(), **TOLERANCE)


def test_spm_loss_binary_weight_masks_rows():
    z, mu, q = case(n=10, seed=6)
    keep = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 1, 1], dtype=torch.bool)
    z = z.clone().requires_grad_(True)
    loss = spm_loss(z, mu, q, weight=keep.float())
    torch.testing.assert_close(loss, spm_loss(z[keep], mu, q[keep]))
    loss.backward()
    assert torch.equal(z.grad[~keep], torch.zeros_like(z.grad[~keep]))


def test_spm_loss_from_similarities_equals_spm_loss_in_value_and_gradient():
    z, mu, q = case(seed=7)
    za = z.clone().requires_grad_(True)
    zb = z.clone().requires_grad_(True)
    direct = spm_loss(za, mu, q, 0.1)
    shared = spm_loss_from_similarities(zb @ mu.t(), q, 0.1)
    torch.testing.assert_close(shared, direct)
    direct.backward()
    shared.backward()
    torch.testing.assert_close(zb.grad, za.grad)


def test_spm_loss_from_similarities_does_not_backpropagate_into_assignments():
    z, mu, q = case(seed=8)
    s = (z @ mu.t()).requires_grad_(True)
    q = q.clone().requires_grad_(True)
    spm_loss_from_similarities(s, q).backward()
    assert q.grad is None
    # d/dS of eq. 4 (mean over rows) is (softmax(S / tau) - Q) / (tau N)
    expected = (torch.softmax(s.detach() / 0.1, dim=1) - q.detach()) / (0.1 * z.shape[0])
    torch.testing.assert_close(s.grad, expected, **TOLERANCE)


def test_spm_loss_under_autocast_is_float32_and_unchanged():
    z, mu, q = case(seed=9)
    reference = spm_loss(z, mu, q)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = spm_loss(z, mu, q)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference)


@pytest.mark.parametrize(
    ("z", "mu", "q", "kwargs"),
    [
        (torch.randn(8), torch.randn(3, 8), torch.rand(1, 3), {}),
        (torch.randn(4, 8), torch.randn(3, 7), torch.rand(4, 3), {}),
        (torch.randn(4, 8), torch.randn(3, 8), torch.rand(4, 4), {}),
        (torch.randn(4, 8), torch.randn(3, 8), torch.rand(5, 3), {}),
        (torch.randn(4, 8), torch.randn(3, 8), torch.rand(4, 3), {"temperature": 0.0}),
        (torch.randn(4, 8), torch.randn(3, 8), torch.rand(4, 3), {"reduction": "avg"}),
    ],
)
def test_spm_loss_bad_input_raises_value_error(z, mu, q, kwargs):
    with pytest.raises(ValueError):
        spm_loss(z, mu, q, **kwargs)


def test_spm_loss_from_similarities_bad_input_raises_value_error():
    with pytest.raises(ValueError):
        spm_loss_from_similarities(torch.randn(5), torch.rand(5))
    with pytest.raises(ValueError):
        spm_loss_from_similarities(torch.randn(4, 3), torch.rand(4, 2))
    with pytest.raises(ValueError):
        spm_loss_from_similarities(torch.randn(4, 3), torch.rand(4, 3), temperature=-1.0)


# -------------------------------------------------------------------------------------- spherical_kmeans


def separated_clusters(k: int, d: int, per_cluster: int, noise: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    directions, _ = torch.linalg.qr(torch.randn(d, k, generator=g))
    directions = directions.t().contiguous()  # (k, d) orthonormal
    labels = torch.arange(k).repeat_interleave(per_cluster)
    points = directions[labels] + noise * torch.randn(k * per_cluster, d, generator=g)
    scale = torch.rand(k * per_cluster, 1, generator=g) * 4 + 0.5  # the radius must not matter
    perm = torch.randperm(k * per_cluster, generator=g)
    return (points * scale)[perm], directions


@pytest.mark.parametrize("seed", range(4))
def test_kmeans_recovers_well_separated_clusters(seed):
    x, directions = separated_clusters(k=6, d=16, per_cluster=25, noise=0.03, seed=seed)
    centres = spherical_kmeans(x, 6, generator=torch.Generator().manual_seed(seed))
    assert centres.shape == (6, 16) and centres.dtype == torch.float32
    cos = centres @ directions.t()
    owner = cos.argmax(dim=1)
    # every true cluster gets exactly one centre, and that centre sits on its direction
    assert sorted(owner.tolist()) == list(range(6))
    assert (cos.amax(dim=1) > 0.99).all()


@pytest.mark.parametrize("seed", range(4))
def test_kmeans_plus_plus_seeding_covers_separated_clusters(seed):
    # No Lloyd step: the centres are the seeds. Drawing each seed with probability proportional to its cosine
    # distance to the seeds so far almost never picks a second point of an already covered cluster (distance
    # ~1e-4 against ~1), whereas uniform seeding would leave some of 8 clusters uncovered most of the time.
    x, directions = separated_clusters(k=8, d=16, per_cluster=25, noise=0.005, seed=seed)
    centres = spherical_kmeans(x, 8, iterations=0, generator=torch.Generator().manual_seed(seed))
    xn = x / x.norm(dim=1, keepdim=True)
    assert ((centres @ xn.t()).amax(dim=1) > 1 - 1e-6).all()  # seeds are data points
    assert sorted((centres @ directions.t()).argmax(dim=1).tolist()) == list(range(8))


def test_kmeans_centres_are_unit_and_lloyd_fixed_points():
    x, _ = separated_clusters(k=4, d=8, per_cluster=20, noise=0.05, seed=11)
    centres = spherical_kmeans(x, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(centres.norm(dim=1), torch.ones(4))
    xn = x / x.norm(dim=1, keepdim=True)
    nearest = (xn @ centres.t()).argmax(dim=1)
    for k in range(4):
        mean = xn[nearest == k].sum(dim=0)
        torch.testing.assert_close(centres[k], mean / mean.norm(), atol=1e-5, rtol=1e-5)


def test_kmeans_with_n_equal_k_returns_the_points():
    g = torch.Generator().manual_seed(12)
    x = torch.randn(7, 5, generator=g) * 3
    centres = spherical_kmeans(x, 7, generator=g)
    xn = x / x.norm(dim=1, keepdim=True)
    cos = centres @ xn.t()
    assert sorted(cos.argmax(dim=1).tolist()) == list(range(7))
    torch.testing.assert_close(cos.amax(dim=1), torch.ones(7))


def test_kmeans_reproducible_with_seeded_generator():
    g = torch.Generator().manual_seed(13)
    x = torch.randn(200, 10, generator=g)
    first = spherical_kmeans(x, 9, generator=torch.Generator().manual_seed(5))
    second = spherical_kmeans(x, 9, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first, second)
    torch.testing.assert_close(first.norm(dim=1), torch.ones(9))


def test_kmeans_degenerate_input_still_gives_unit_rows():
    x = torch.tensor([[1.0, 0.0, 0.0]]).repeat(6, 1)
    x[3] = torch.tensor([0.0, 2.0, 0.0])
    centres = spherical_kmeans(x, 4, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(centres).all()
    torch.testing.assert_close(centres.norm(dim=1), torch.ones(4))


@pytest.mark.parametrize(("x", "k"), [(torch.randn(3, 4), 4), (torch.randn(5, 4), 0), (torch.randn(5), 2)])
def test_kmeans_bad_input_raises_value_error(x, k):
    with pytest.raises(ValueError):
        spherical_kmeans(x, k)


# ------------------------------------------------------------------------------------------ ema_prototypes


def ema_transcription(mu: torch.Tensor, t: torch.Tensor, m: float) -> torch.Tensor:
    t = t.double() / t.double().norm(dim=1, keepdim=True)
    moved = m * mu.double() + (1 - m) * t
    return moved / moved.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9, 0.99])
def test_ema_matches_transcription_and_keeps_unit_norm(momentum):
    g = torch.Generator().manual_seed(20)
    mu = unit_rows(6, 5, g)
    targets = torch.randn(6, 5, generator=g) * 7
    new = ema_prototypes(mu, targets, momentum)
    assert new.dtype == torch.float32
    torch.testing.assert_close(new.norm(dim=1), torch.ones(6))
    torch.testing.assert_close(new.double(), ema_transcription(mu, targets, momentum), **TOLERANCE)


def test_ema_momentum_one_is_identity():
    g = torch.Generator().manual_seed(21)
    mu = unit_rows(6, 5, g)
    torch.testing.assert_close(ema_prototypes(mu, torch.randn(6, 5, generator=g), 1.0), mu)


def test_ema_moves_toward_target():
    g = torch.Generator().manual_seed(22)
    mu = unit_rows(6, 5, g)
    targets = torch.randn(6, 5, generator=g)
    t = targets / targets.norm(dim=1, keepdim=True)
    new = ema_prototypes(mu, targets, 0.9)
    assert ((new * t).sum(dim=1) > (mu * t).sum(dim=1)).all()


@pytest.mark.parametrize("momentum", [0.9, 0.5])
def test_ema_zero_target_row_leaves_prototype_unchanged(momentum):
    g = torch.Generator().manual_seed(23)
    mu = unit_rows(4, 6, g)
    targets = torch.randn(4, 6, generator=g)
    targets[2] = 0
    new = ema_prototypes(mu, targets, momentum)
    torch.testing.assert_close(new[2], mu[2])
    assert not torch.allclose(new[0], mu[0])


def test_ema_zero_target_row_leaves_prototype_unchanged_at_momentum_zero():
    # momentum 0 (replace each prototype by its normalised target) is accepted; a prototype that received no
    # mass must still keep its direction, not become a zero vector.
    g = torch.Generator().manual_seed(24)
    mu = unit_rows(4, 6, g)
    targets = torch.randn(4, 6, generator=g)
    targets[1] = 0
    new = ema_prototypes(mu, targets, 0.0)
    torch.testing.assert_close(new[1], mu[1])
    torch.testing.assert_close(new.norm(dim=1), torch.ones(4))


@pytest.mark.parametrize("momentum", [-0.1, 1.5])
def test_ema_bad_momentum_raises_value_error(momentum):
    with pytest.raises(ValueError):
        ema_prototypes(torch.eye(3), torch.eye(3), momentum)


@pytest.mark.parametrize(
    ("prototypes", "targets"),
    [
        (torch.eye(4), torch.ones(1, 4)),  # would broadcast silently
        (torch.eye(4), torch.ones(4)),
        (torch.eye(4), torch.ones(4, 3)),
    ],
)
def test_ema_shape_mismatch_raises_value_error(prototypes, targets):
    with pytest.raises(ValueError):
        ema_prototypes(prototypes, targets, 0.9)
