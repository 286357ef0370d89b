"""Grouped BatchNorm statistics and the released initialisation (``torch_arcad._released``)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from torch_arcad import FocalDiscriminator
from torch_arcad._released import discriminator_logits_by_group, grouped_batch_norm, trunc_normal_init_

CHANNELS = 5


def rows(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, CHANNELS, generator=g) * 2 + 1


def separate_calls(norm, x, group, weight, num_groups):
    """The reference: ``norm`` in training mode called once per non-empty group on that group's weighted rows."""
    out = torch.zeros_like(x)
    for g in range(num_groups):
        chosen = (group == g) & (weight > 0)
        if chosen.any():
            out = out.index_put((chosen.nonzero(as_tuple=True)[0],), norm(x[chosen]))
    return out


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("affine", [True, False])
def test_equals_one_call_per_group(momentum, affine):
    norm = nn.BatchNorm1d(CHANNELS, momentum=momentum, affine=affine)
    if affine:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-1, 1)
    norm.running_mean.uniform_(-1, 1)
    reference = copy.deepcopy(norm)
    x = rows(23)
    group = torch.tensor([0] * 8 + [1] * 6 + [2] * 9)
    weight = torch.ones(23)
    weight[[3, 10, 20]] = 0  # rows that take their group's statistics without shaping them
    for step in range(2):  # the second step starts from updated running statistics
        mine, theirs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        out = grouped_batch_norm(mine, norm, group, weight, 3)
        expected = separate_calls(reference, theirs, group, weight, 3)
        kept = weight > 0
        assert torch.allclose(out[kept], expected[kept], atol=1e-5)
        probe = torch.randn(23, CHANNELS, generator=torch.Generator().manual_seed(step)) * weight.unsqueeze(1)
        (g_mine,) = torch.autograd.grad((out * probe).sum(), mine)
        (g_theirs,) = torch.autograd.grad((expected * probe).sum(), theirs)
        assert torch.allclose(g_mine, g_theirs, atol=1e-5)
        assert torch.allclose(norm.running_mean, reference.running_mean, atol=1e-6)
        assert torch.allclose(norm.running_var, reference.running_var, atol=1e-6)
        assert int(norm.num_batches_tracked) == int(reference.num_batches_tracked) == 3 * (step + 1)


def test_empty_group_leaves_running_statistics_alone_and_stays_finite():
    norm = nn.BatchNorm1d(CHANNELS)
    reference = copy.deepcopy(norm)
    x = rows(10).requires_grad_(True)
    group = torch.tensor([0] * 4 + [1] * 6)
    weight = torch.tensor([1.0] * 4 + [0.0] * 6)  # group 1 has rows but none of weight 1; group 2 has no rows
    out = grouped_batch_norm(x, norm, group, weight, 3)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    reference(x.detach()[:4])
    assert torch.allclose(norm.running_mean, reference.running_mean)
    assert torch.allclose(norm.running_var, reference.running_var)
    assert int(norm.num_batches_tracked) == 1


def test_untracked_statistics_are_left_alone():
    norm = nn.BatchNorm1d(CHANNELS, track_running_stats=False)
    x, group, weight = rows(8), torch.tensor([0] * 4 + [1] * 4), torch.ones(8)
    out = grouped_batch_norm(x, norm, group, weight, 2)
    assert torch.allclose(out, separate_calls(norm, x, group, weight, 2), atol=1e-5)


def test_discriminator_by_group():
    torch.manual_seed(0)
    disc = FocalDiscriminator(CHANNELS, norm="batch")
    x, group, weight = rows(12), torch.tensor([0] * 5 + [1] * 7), torch.ones(12)
    grouped = discriminator_logits_by_group(disc, x, group, weight, 2)
    reference = copy.deepcopy(disc)
    expected = torch.cat([reference(x[:5]), reference(x[5:])])
    assert torch.allclose(grouped, expected, atol=1e-5)
    # evaluation mode, or no BatchNorm: the ordinary call
    disc.eval()
    assert torch.equal(discriminator_logits_by_group(disc, x, group, weight, 2), disc(x))
    plain = FocalDiscriminator(CHANNELS).train()
    assert torch.equal(discriminator_logits_by_group(plain, x, group, weight, 2), plain(x))


def test_trunc_normal_init():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(64, 48), nn.BatchNorm1d(48), nn.Linear(48, 1, bias=False))
    trunc_normal_init_(module)
    assert module[0].weight.abs().max() <= 0.03 and module[2].weight.abs().max() <= 0.03
    assert not module[0].bias.any()
    assert torch.equal(module[1].weight, torch.ones(48))  # BatchNorm keeps its own initialisation


def test_frozen_batch_norm_uses_its_running_statistics():
    torch.manual_seed(0)
    disc = FocalDiscriminator(CHANNELS, norm="batch")
    disc.net[1].eval()  # the rest trains; BatchNorm frozen, as one may do for fine-tuning
    x, group, weight = rows(12), torch.tensor([0] * 5 + [1] * 7), torch.ones(12)
    assert torch.equal(discriminator_logits_by_group(disc, x, group, weight, 2), disc(x))
