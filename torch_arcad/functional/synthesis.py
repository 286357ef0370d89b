"""Prototype-restricted pseudo-anomaly synthesis on the hypersphere, eq. 5-6."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import check_dim, check_positive, check_rank

__all__ = ["synthesize_pseudo_anomalies"]

#: Default number of float elements one chunk of the candidate search may materialise (64 MiB in float32).
DEFAULT_CHUNK_ELEMENTS = 1 << 24


def synthesize_pseudo_anomalies(
    anchors: Tensor,
    prototypes: Tensor,
    *,
    sigma: float = 0.015,
    num_candidates: int = 5,
    generator: torch.Generator | None = None,
    detach: bool = False,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> Tensor:
    r"""One pseudo-anomaly per anchor: the noisy candidate farthest from every prototype (eq. 5-6).

    For each anchor z, ``num_candidates`` candidates :math:`a' = (z + \xi)/\|z + \xi\|`,
    :math:`\xi \sim \mathcal{N}(0, \sigma^2 I)` (eq. 5) are drawn and the one minimising
    :math:`\max_k a'^\top \mu_k` is kept (eq. 6).

    The search runs without autograd, in chunks of anchors so that at most ``chunk_elements`` floats of
    candidates (and of candidate-prototype similarities) exist at once; all candidates of a chunk meet the
    prototypes in a single matmul. The chosen candidate is then recomputed from its anchor and its noise, so it
    keeps its gradient to the anchor (the released code's behaviour) unless ``detach`` is set.

    Args:
        anchors: (N, D) unit-norm normal features.
        prototypes: (K, D) unit-norm prototypes (no gradient is taken through them).
        sigma: noise standard deviation, ``>= 0``.
        num_candidates: N_cand (the paper uses 5, the released code 50).
        generator: optional random generator on the anchors' device.
        detach: return pseudo-anomalies without gradient to the anchors.
        chunk_elements: memory bound of the search, in elements.

    Returns:
        (N, D) unit-norm pseudo-anomalies, dtype of ``anchors``.
    """
    check_rank("anchors", anchors, 2, "(N, D)")
    check_rank("prototypes", prototypes, 2, "(K, D)")
    check_dim("prototypes", prototypes, 1, anchors.shape[1], "(K, D) with D = anchors.shape[1]")
    check_positive("sigma", sigma, allow_zero=True)
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
    num_anchors, dim = anchors.shape
    per_anchor = num_candidates * max(dim, prototypes.shape[0])
    rows_per_chunk = max(1, chunk_elements // per_anchor)

    chosen_noise = []
    with torch.no_grad():
        mu = prototypes.detach()
        for start in range(0, num_anchors, rows_per_chunk):  # a handful of chunks, not a loop over patches
            z = anchors.detach()[start : start + rows_per_chunk]
            noise = torch.randn(
                (z.shape[0], num_candidates, dim), device=z.device, dtype=z.dtype, generator=generator
            ).mul_(sigma)
            candidates = noise.add_(z.unsqueeze(1))  # z + xi, in place: the chosen noise is recovered below
            # max_k cos(a', mu_k) = max_k (a' . mu_k) / |a'|: no normalised copy of the candidates is needed
            dots = candidates @ mu.t().to(candidates.dtype)  # (n, C, K), all candidates in one matmul
            worst_case = dots.amax(dim=2) / candidates.norm(dim=2)
            pick = worst_case.argmin(dim=1)
            chosen_noise.append(candidates[torch.arange(z.shape[0], device=z.device), pick] - z)
    noise = torch.cat(chosen_noise) if chosen_noise else anchors.new_zeros((0, dim))
    source = anchors.detach() if detach else anchors
    return F.normalize(source + noise, dim=1)
