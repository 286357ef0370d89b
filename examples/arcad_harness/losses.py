"""Reconstruction losses of the baselines, weighted per image so that only normal images count.

Every loss takes per-image ``weights`` (B,) (1 for normal images, 0 for defective ones) and returns
``sum_b w_b loss_b / sum_b w_b`` (0 when no weight is positive). The encoder features are the targets and never
receive gradient (stop-gradient).

* :func:`pixel_cosine_loss`: RD4AD, the mean over positions of ``1 - cos`` per layer, summed over layers.
* :func:`global_cosine_loss`: ReContrast and Dinomaly, ``1 - cos`` of each image's whole flattened map per layer,
  with hard mining: the gradient of well-reconstructed positions is scaled down (ReContrast: positions below
  ``mean + alpha * std`` of the distances get factor 0; Dinomaly: positions below the ``p`` quantile get 0.1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .maps import cosine_distance_map

__all__ = [
    "easy_points_by_quantile",
    "easy_points_by_std",
    "global_cosine_loss",
    "pixel_cosine_loss",
    "scale_gradient",
    "weighted_mean",
]


def weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    """``sum(w v) / sum(w)`` of per-image values (B,) (0 when all weights are 0)."""
    if values.shape != weights.shape:
        raise ValueError(
            f"values and weights must have one shape (B,), got {tuple(values.shape)} and {tuple(weights.shape)}"
        )
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def scale_gradient(x: Tensor, scale: Tensor) -> Tensor:
    """Identity in the forward pass; the gradient reaching ``x`` is multiplied by ``scale`` (broadcast to ``x``).

    ``x.detach() + (x - x.detach()) s`` has exactly the value of ``x`` and the derivative ``s`` (the baselines do
    the same with a gradient hook).
    """
    frozen = x.detach()
    return frozen + (x - frozen) * scale.to(x.dtype)


def pixel_cosine_loss(targets: Sequence[Tensor], reconstructions: Sequence[Tensor], weights: Tensor) -> Tensor:
    """RD4AD's loss: sum over layers of the per-image mean of ``1 - cos`` at every position.

    Args:
        targets: encoder maps (B, C_l, h_l, w_l) per layer (detached here).
        reconstructions: decoder maps of the same shapes.
        weights: float (B,) per-image weights.

    Returns:
        scalar.
    """
    _check_pairs(targets, reconstructions)
    per_image = sum(
        cosine_distance_map(t.detach(), r).flatten(1).mean(dim=1) for t, r in zip(targets, reconstructions)
    )
    return weighted_mean(per_image, weights)  # type: ignore[arg-type]


def _valid_points(distances: Tensor, weights: Tensor) -> Tensor:
    """bool (B, h, w): positions of images with positive weight."""
    return (weights > 0).view(-1, 1, 1).expand_as(distances)


def easy_points_by_std(distances: Tensor, weights: Tensor, alpha: float) -> Tensor:
    """ReContrast's easy positions: distance below ``mean + alpha * std`` of the weighted images' distances.

    Args:
        distances: (B, h, w) ``1 - cos`` per position (no gradient needed).
        weights: (B,) per-image weights; only images with positive weight enter the statistics.
        alpha: number of standard deviations.

    Returns:
        bool (B, h, w).
    """
    valid = _valid_points(distances, weights)
    values = distances[valid]
    if values.numel() < 2:
        return torch.zeros_like(distances, dtype=torch.bool)
    return distances < values.mean() + alpha * values.std()


def easy_points_by_quantile(distances: Tensor, weights: Tensor, p: float) -> Tensor:
    """Dinomaly's easy positions: distance below the ``k``-th largest, ``k = int(n (1 - p))`` over the ``n``
    positions of the weighted images (all positions are hard for ``p = 0``).

    Returns:
        bool (B, h, w).
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p must be in [0, 1), got {p}")
    valid = _valid_points(distances, weights)
    values = distances[valid]
    k = int(values.numel() * (1.0 - p))
    if k < 1:
        return torch.zeros_like(distances, dtype=torch.bool)
    threshold = values.topk(k).values[-1]
    return distances < threshold


def global_cosine_loss(
    targets: Sequence[Tensor],
    reconstructions: Sequence[Tensor],
    weights: Tensor,
    *,
    alpha: float | None = None,
    p: float | None = None,
    factor: float = 0.0,
) -> Tensor:
    """Global cosine loss with hard mining (ReContrast with ``alpha``, Dinomaly with ``p``), summed over layers.

    For each layer: the per-position distances select the easy positions (see :func:`easy_points_by_std` and
    :func:`easy_points_by_quantile`); the reconstruction's gradient there is scaled by ``factor``; the loss is
    ``1 - cos(flatten(target_b), flatten(reconstruction_b))`` per image, averaged with ``weights``.

    Args:
        targets: encoder maps (B, C_l, h_l, w_l) per layer (detached here: stop-gradient).
        reconstructions: decoder maps of the same shapes.
        weights: float (B,) per-image weights.
        alpha: ReContrast's threshold in standard deviations (exclusive with ``p``).
        p: Dinomaly's quantile (exclusive with ``alpha``).
        factor: gradient factor of the easy positions (ReContrast 0, Dinomaly 0.1).

    Returns:
        scalar: the sum over layers.
    """
    _check_pairs(targets, reconstructions)
    if alpha is not None and p is not None:
        raise ValueError("pass either alpha (ReContrast) or p (Dinomaly), not both")
    total = weights.new_zeros(())
    for target, reconstruction in zip(targets, reconstructions):
        target = target.detach()
        if alpha is not None or p is not None:
            with torch.no_grad():
                distances = cosine_distance_map(target, reconstruction)
                if alpha is not None:
                    easy = easy_points_by_std(distances, weights, alpha)
                else:
                    easy = easy_points_by_quantile(distances, weights, p)  # type: ignore[arg-type]
                scale = torch.where(easy, torch.full_like(distances, factor), torch.ones_like(distances))
            reconstruction = scale_gradient(reconstruction, scale.unsqueeze(1))
        per_image = 1.0 - F.cosine_similarity(target.flatten(1), reconstruction.flatten(1), dim=1)
        total = total + weighted_mean(per_image, weights)
    return total


def _check_pairs(targets: Sequence[Tensor], reconstructions: Sequence[Tensor]) -> None:
    if len(targets) != len(reconstructions) or not targets:
        raise ValueError(
            f"expected one reconstruction per target layer, got {len(targets)} targets and {len(reconstructions)}"
        )
    for index, (t, r) in enumerate(zip(targets, reconstructions)):
        if t.shape != r.shape:
            raise ValueError(f"layer {index}: target {tuple(t.shape)} and reconstruction {tuple(r.shape)} differ")
