"""Prototype objective (eq. 4), spherical k-means initialisation and the EMA M-step of section 3.2."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import check_dim, check_positive, check_rank

__all__ = ["spm_loss", "spm_loss_from_similarities", "spherical_kmeans", "ema_prototypes"]


def spm_loss(
    z: Tensor,
    prototypes: Tensor,
    assignments: Tensor,
    temperature: float = 0.1,
    *,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Cross-entropy between the transport plan and the prototype softmax, eq. 4.

    .. math:: \mathcal{L}_{spm} = -\frac{1}{N}\sum_i \sum_k Q_{ik}
              \log \frac{\exp(z_i^\top\mu_k/\tau)}{\sum_j \exp(z_i^\top\mu_j/\tau)}

    Args:
        z: (N, D) unit-norm features; the gradient flows into them.
        prototypes: (K, D) unit-norm prototypes; treated as constants (no gradient).
        assignments: (N, K) plan Q from :func:`sinkhorn_knopp` (rows sum to 1); treated as constants.
        temperature: tau = 1 / kappa of the vMF model, ``> 0``.
        weight: optional (N,) row weights; with ``"mean"`` the result is ``sum_i w_i CE_i / max(sum_i w_i, 1)``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-row (N,) losses, unweighted).

    Returns:
        Scalar float32 loss (or (N,) for ``"none"``). The logits are formed in float32.
    """
    check_rank("z", z, 2, "(N, D)")
    check_rank("prototypes", prototypes, 2, "(K, D)")
    check_dim("prototypes", prototypes, 1, z.shape[1], "(K, D) with D = z.shape[1]")
    check_rank("assignments", assignments, 2, "(N, K)")
    if assignments.shape != (z.shape[0], prototypes.shape[0]):
        raise ValueError(
            f"assignments must have shape (N, K) = ({z.shape[0]}, {prototypes.shape[0]}), "
            f"got {tuple(assignments.shape)}"
        )
    check_positive("temperature", temperature)
    with torch.autocast(device_type=z.device.type, enabled=False):
        similarities = z.float() @ prototypes.detach().float().t()
    return spm_loss_from_similarities(similarities, assignments, temperature, weight=weight, reduction=reduction)


def spm_loss_from_similarities(
    similarities: Tensor,
    assignments: Tensor,
    temperature: float = 0.1,
    *,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Eq. 4 from precomputed similarities ``S = z mu^T`` (N, K), so the caller can share one matmul between
    the Sinkhorn scores (``S.detach()``) and the loss. Arguments and result as in :func:`spm_loss`.
    """
    check_rank("similarities", similarities, 2, "(N, K)")
    if assignments.shape != similarities.shape:
        raise ValueError(
            f"assignments must have the shape (N, K) of similarities {tuple(similarities.shape)}, "
            f"got {tuple(assignments.shape)}"
        )
    check_positive("temperature", temperature)
    with torch.autocast(device_type=similarities.device.type, enabled=False):
        per_row = F.cross_entropy(
            similarities.float() / temperature, assignments.detach().float(), reduction="none"
        )
    if reduction == "none":
        return per_row
    if weight is not None:
        per_row = per_row * weight
    if reduction == "sum":
        return per_row.sum()
    if reduction != "mean":
        raise ValueError(f"reduction must be one of ('none', 'mean', 'sum'), got {reduction!r}")
    if weight is None:
        return per_row.mean()
    return per_row.sum() / weight.sum().clamp_min(1)


@torch.no_grad()
def spherical_kmeans(
    x: Tensor,
    num_clusters: int,
    *,
    iterations: int = 10,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Spherical (cosine) k-means with k-means++ seeding.

    Seeding draws each new centre with probability proportional to its cosine distance ``1 - max_c x.c`` to the
    centres chosen so far (on the sphere ``|x - c|^2 = 2 (1 - x.c)``, so this is k-means++'s squared-distance
    rule). Lloyd iterations then assign each point to its most similar centre and set each centre to the
    normalised sum of its points; a centre that loses all its points is moved to the point farthest from every
    centre.

    Args:
        x: (N, D) features (normalised inside), N >= num_clusters, all finite.
        num_clusters: K.
        iterations: Lloyd iterations after seeding.
        generator: random generator on ``x``'s device for reproducible seeding.

    Returns:
        (K, D) float32 unit-norm centres.
    """
    check_rank("x", x, 2, "(N, D)")
    num_points = x.shape[0]
    if num_clusters < 1:
        raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
    if num_points < num_clusters:
        raise ValueError(f"spherical_kmeans needs at least num_clusters={num_clusters} points, got N={num_points}")
    x = F.normalize(x.float(), dim=1)
    tiny = torch.finfo(torch.float32).tiny
    centres = x.new_empty((num_clusters, x.shape[1]))
    first = torch.randint(num_points, (1,), device=x.device, generator=generator)
    centres[0] = x[first[0]]
    best = x @ centres[0]
    for k in range(1, num_clusters):  # K sequential draws: inherent to k-means++, init-time only
        distance = (1 - best).clamp_min(0) + tiny
        pick = torch.multinomial(distance, 1, generator=generator)
        centres[k] = x[pick[0]]
        best = torch.maximum(best, x @ centres[k])

    for _ in range(iterations):
        similarity = x @ centres.t()
        nearest = similarity.argmax(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, nearest, x)
        counts = torch.bincount(nearest, minlength=num_clusters)
        empty = counts == 0
        # Refill empty clusters with the points least similar to their own centre.
        farthest = similarity.amax(dim=1).argsort()[:num_clusters]
        refill = x[farthest[torch.cumsum(empty.long(), 0) - 1].clamp_min(0)]
        centres = torch.where(empty.unsqueeze(1), refill, F.normalize(sums, dim=1))
    return centres


@torch.no_grad()
def ema_prototypes(prototypes: Tensor, targets: Tensor, momentum: float) -> Tensor:
    r"""EMA M-step on the sphere: ``normalize(m * mu + (1 - m) * normalize(t))``.

    Args:
        prototypes: (K, D) unit-norm current prototypes.
        targets: (K, D) unnormalised targets, e.g. ``Q^T z`` summed over the (global) batch. A zero row (a
            prototype that received no mass) leaves its prototype unchanged.
        momentum: m in [0, 1]; 1 freezes the prototypes.

    Returns:
        (K, D) new unit-norm prototypes (float32).
    """
    check_rank("prototypes", prototypes, 2, "(K, D)")
    if targets.shape != prototypes.shape:
        raise ValueError(
            f"targets must have the shape (K, D) = {tuple(prototypes.shape)} of prototypes, got {tuple(targets.shape)}"
        )
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    current = prototypes.float()
    moved = F.normalize(momentum * current + (1 - momentum) * F.normalize(targets.float(), dim=1), dim=1)
    no_mass = (targets == 0).all(dim=1, keepdim=True)
    return torch.where(no_mass, current, moved)
