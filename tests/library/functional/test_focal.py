"""Tests of ``torch_arcad.functional.binary_focal_loss_with_logits`` (the loss of eq. 9).

The reference is torchvision's ``sigmoid_focal_loss`` formula transcribed in float64, with the cross-entropy
written out as ``-(y log p + (1 - y) log(1 - p))``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torch_arcad.functional import binary_focal_loss_with_logits

SATURATING_LOGIT = 1e4
#: float32 result against a float64 reference
TOLERANCE = {"atol": 1e-6, "rtol": 1e-5}


def torchvision_focal(logits: torch.Tensor, targets: torch.Tensor, alpha: float | None, gamma: float) -> torch.Tensor:
    """Element-wise focal loss, torchvision's ``sigmoid_focal_loss`` with ``reduction="none"``, float64."""
    x = logits.double()
    y = targets.double()
    p = torch.sigmoid(x)
    ce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha is not None and alpha >= 0:
        alpha_t = alpha * y + (1 - alpha) * (1 - y)
        loss = alpha_t * loss
    return loss


def random_case(shape=(7, 5), seed=0, soft=False):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g) * 3
    targets = torch.rand(shape, generator=g) if soft else (torch.rand(shape, generator=g) < 0.4).float()
    return logits, targets


@pytest.mark.parametrize("alpha", [0.75, 0.25, 0.5, 0.0, 1.0, None, -1.0])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 3.5])
@pytest.mark.parametrize("soft", [False, True])
def test_matches_torchvision_formula(alpha, gamma, soft):
    logits, targets = random_case(seed=int(gamma * 10) + (1 if soft else 0), soft=soft)
    loss = binary_focal_loss_with_logits(logits, targets, alpha, gamma, reduction="none")
    expected = torchvision_focal(logits, targets, alpha, gamma)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, **TOLERANCE)


@pytest.mark.parametrize("alpha", [0.75, 0.25])
def test_gradient_matches_torchvision_formula(alpha):
    logits, targets = random_case(seed=3)
    logits32 = logits.clone().requires_grad_(True)
    binary_focal_loss_with_logits(logits32, targets, alpha, 2.0).backward()
    logits64 = logits.double().requires_grad_(True)
    torchvision_focal(logits64, targets, alpha, 2.0).mean().backward()
    torch.testing.assert_close(logits32.grad.double(), logits64.grad, atol=1e-7, rtol=1e-5)


def test_defaults_are_alpha_075_gamma_2_mean():
    logits, targets = random_case(seed=4)
    loss = binary_focal_loss_with_logits(logits, targets)
    torch.testing.assert_close(loss.double(), torchvision_focal(logits, targets, 0.75, 2.0).mean(), **TOLERANCE)


@pytest.mark.parametrize("alpha", [0.75, 0.3])
def test_gamma_zero_is_alpha_weighted_bce(alpha):
    logits, targets = random_case(seed=5)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    expected = F.binary_cross_entropy_with_logits(logits, targets, weight=alpha_t)
    torch.testing.assert_close(binary_focal_loss_with_logits(logits, targets, alpha, 0.0), expected)


@pytest.mark.parametrize("alpha", [None, -1.0])
def test_no_alpha_and_gamma_zero_is_plain_bce(alpha):
    logits, targets = random_case(seed=6)
    expected = F.binary_cross_entropy_with_logits(logits, targets)
    torch.testing.assert_close(binary_focal_loss_with_logits(logits, targets, alpha, 0.0), expected)


def test_alpha_weights_the_positives():
    logits = torch.zeros(2)
    targets = torch.tensor([1.0, 0.0])
    loss = binary_focal_loss_with_logits(logits, targets, alpha=0.75, gamma=0.0, reduction="none")
    # at p = 1/2 both terms are log 2; the positive gets 0.75, the negative 0.25
    torch.testing.assert_close(loss, torch.tensor([0.75, 0.25]) * torch.log(torch.tensor(2.0)))


def test_focusing_down_weights_easy_examples():
    targets = torch.ones(2)
    logits = torch.tensor([4.0, -1.0])  # an easy and a hard positive
    bce = binary_focal_loss_with_logits(logits, targets, None, 0.0, reduction="none")
    focal = binary_focal_loss_with_logits(logits, targets, None, 2.0, reduction="none")
    ratio = focal / bce
    torch.testing.assert_close(ratio, torch.sigmoid(-logits) ** 2)
    assert ratio[0] < ratio[1]


def _saturated_case():
    x = torch.tensor([SATURATING_LOGIT, -SATURATING_LOGIT, SATURATING_LOGIT, -SATURATING_LOGIT, 200.0, -200.0])
    y = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    return x, y


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 3.0])
@pytest.mark.parametrize("alpha", [0.75, None])
def test_finite_value_and_gradient_for_saturated_logits(gamma, alpha):
    x, y = _saturated_case()
    # a naive log(sigmoid(x)) is -inf for the wrong-side logits
    assert torch.isinf(torch.log(torch.sigmoid(-x[2:3])))
    x.requires_grad_(True)
    loss = binary_focal_loss_with_logits(x, y, alpha, gamma, reduction="none")
    assert torch.isfinite(loss).all()
    alpha_t = torch.ones(6) if alpha is None else alpha * y + (1 - alpha) * (1 - y)
    # confident and right: zero loss; confident and wrong: |x| * alpha_t (1 - p_t = 1)
    expected = torch.tensor([0.0, 0.0, SATURATING_LOGIT, SATURATING_LOGIT, 0.0, 0.0]) * alpha_t
    torch.testing.assert_close(loss.detach(), expected)
    loss.sum().backward()
    assert torch.isfinite(x.grad).all()
    # d/dx of |x| on the wrong side is +-1 (times alpha_t), and 0 on the right side
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 0.0, 1.0, -1.0, 0.0, 0.0]) * alpha_t)


def test_finite_gradient_for_saturated_logits_with_gamma_below_one():
    # gamma in (0, 1) is accepted (gamma >= 0); d/dq q**gamma is infinite at q = 1 - p_t = 0, which
    # must not turn a correctly classified saturated logit into a NaN gradient.
    x, y = _saturated_case()
    x.requires_grad_(True)
    loss = binary_focal_loss_with_logits(x, y, 0.75, 0.5, reduction="sum")
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all(), x.grad


def test_reductions():
    logits, targets = random_case(seed=7)
    none = binary_focal_loss_with_logits(logits, targets, reduction="none")
    assert none.shape == logits.shape
    torch.testing.assert_close(binary_focal_loss_with_logits(logits, targets, reduction="sum"), none.sum())
    torch.testing.assert_close(binary_focal_loss_with_logits(logits, targets, reduction="mean"), none.mean())
    assert binary_focal_loss_with_logits(logits, targets, reduction="sum").dim() == 0


def test_weight_with_each_reduction():
    logits, targets = random_case(seed=8)
    g = torch.Generator().manual_seed(8)
    weight = torch.rand(logits.shape, generator=g) * 3
    element = torchvision_focal(logits, targets, 0.75, 2.0)
    none = binary_focal_loss_with_logits(logits, targets, reduction="none", weight=weight)
    torch.testing.assert_close(none.double(), element * weight.double(), **TOLERANCE)
    total = binary_focal_loss_with_logits(logits, targets, reduction="sum", weight=weight)
    torch.testing.assert_close(total.double(), (element * weight.double()).sum(), **TOLERANCE)
    mean = binary_focal_loss_with_logits(logits, targets, reduction="mean", weight=weight)
    torch.testing.assert_close(mean.double(), (element * weight.double()).sum() / weight.double().sum(), **TOLERANCE)


def test_binary_weight_is_a_mask():
    logits, targets = random_case(seed=9)
    keep = torch.zeros(logits.shape, dtype=torch.bool)
    keep[::2] = True
    loss = binary_focal_loss_with_logits(logits, targets, weight=keep.float())
    expected = binary_focal_loss_with_logits(logits[keep], targets[keep])
    torch.testing.assert_close(loss, expected)


def test_broadcast_weight():
    logits, targets = random_case(shape=(6, 4), seed=10)
    row_weight = torch.tensor([1.0, 0.0, 2.0, 1.0, 0.0, 3.0]).unsqueeze(1)
    loss = binary_focal_loss_with_logits(logits, targets, weight=row_weight)
    element = torchvision_focal(logits, targets, 0.75, 2.0)
    full = row_weight.double().expand(6, 4)
    torch.testing.assert_close(loss.double(), (element * full).sum() / full.sum(), **TOLERANCE)


def test_all_zero_weight_gives_zero_not_nan():
    logits, targets = random_case(seed=11)
    logits.requires_grad_(True)
    loss = binary_focal_loss_with_logits(logits, targets, weight=torch.zeros_like(logits))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_give_float32(dtype):
    logits, targets = random_case(seed=12)
    logits_low = logits.to(dtype)
    loss = binary_focal_loss_with_logits(logits_low, targets.to(dtype), reduction="none")
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss.double(), torchvision_focal(logits_low, targets, 0.75, 2.0), **TOLERANCE)
    big = torch.tensor([60000.0, -60000.0], dtype=dtype)
    wrong = binary_focal_loss_with_logits(big, torch.tensor([0.0, 1.0], dtype=dtype))
    assert wrong.dtype == torch.float32 and torch.isfinite(wrong)


def test_float32_under_autocast():
    layer = torch.nn.Linear(4, 1)
    x = torch.randn(8, 4)
    targets = (torch.rand(8) < 0.5).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(x).squeeze(1)
        assert logits.dtype == torch.bfloat16
        loss = binary_focal_loss_with_logits(logits, targets)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), torchvision_focal(logits.float(), targets, 0.75, 2.0).mean(), **TOLERANCE)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"reduction": "avg"},
        {"reduction": None},
        {"gamma": -1.0},
        {"alpha": 1.5},
    ],
)
def test_bad_arguments_raise_value_error(kwargs):
    logits, targets = random_case(seed=13)
    with pytest.raises(ValueError):
        binary_focal_loss_with_logits(logits, targets, **kwargs)


def test_shape_mismatch_raises_value_error():
    with pytest.raises(ValueError, match="shape"):
        binary_focal_loss_with_logits(torch.randn(4, 2), torch.ones(4))
    with pytest.raises(ValueError):
        binary_focal_loss_with_logits(torch.randn(4), torch.ones(4, 1))
