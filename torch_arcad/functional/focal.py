"""Binary focal loss on logits (Lin et al., 2017), the loss of eq. 9."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import check_choice

__all__ = ["binary_focal_loss_with_logits"]

_REDUCTIONS = ("none", "mean", "sum")


def binary_focal_loss_with_logits(
    logits: Tensor,
    targets: Tensor,
    alpha: float | None = 0.75,
    gamma: float = 2.0,
    reduction: str = "mean",
    *,
    weight: Tensor | None = None,
) -> Tensor:
    r"""Binary focal loss computed from logits, torchvision's ``sigmoid_focal_loss`` convention.

    .. math:: \mathrm{FL} = -\alpha_t (1 - p_t)^\gamma \log p_t,\quad
              p_t = p\,y + (1-p)(1-y),\quad \alpha_t = \alpha\,y + (1-\alpha)(1-y)

    ``alpha`` weights the positives (targets 1). ``-log p_t`` is ``binary_cross_entropy_with_logits`` and
    ``1 - p_t`` is formed as ``sigmoid(x)(1 - y) + sigmoid(-x) y``, so neither saturates for large ``|x|``.

    Args:
        logits: any shape, floating.
        targets: same shape as ``logits``, values in [0, 1].
        alpha: weight of the positive class in [0, 1], or ``None`` (or a negative value) for no class weighting.
        gamma: focusing exponent, ``>= 0``; 0 gives the (alpha-weighted) binary cross-entropy.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        weight: optional per-element weights broadcastable to ``logits``; with ``"mean"`` the result is
            ``sum(w * FL) / max(sum(w), 1)`` for weights given, so masked-out elements do not count.

    Returns:
        The loss, float32 under autocast; shape of ``logits`` for ``"none"``, a scalar otherwise.
    """
    check_choice("reduction", reduction, _REDUCTIONS)
    if logits.shape != targets.shape:
        raise ValueError(
            f"targets must have the shape of logits {tuple(logits.shape)}, got {tuple(targets.shape)}"
        )
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if alpha is not None and alpha > 1:
        raise ValueError(f"alpha must be in [0, 1] (or None), got {alpha}")
    logits = logits.float()
    targets = targets.to(logits.dtype)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    one_minus_pt = torch.sigmoid(logits) * (1 - targets) + torch.sigmoid(-logits) * targets
    # clamped so that pow's derivative stays finite for 0 < gamma < 1 when a logit saturates
    modulating = one_minus_pt.clamp_min(torch.finfo(one_minus_pt.dtype).tiny).pow(gamma)
    loss = ce * modulating if gamma != 0 else ce
    if alpha is not None and alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    if weight is not None:
        loss = loss * weight
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if weight is None:
        return loss.mean()
    return loss.sum() / torch.broadcast_to(weight, logits.shape).sum().clamp_min(1)
