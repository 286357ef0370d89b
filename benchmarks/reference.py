"""A literal transcription of the paper's eq. 3-9 and of SwAV's exp-domain Sinkhorn loop.

Every equation is written as it is printed: nothing fused, chunked or shared, boolean masks to pick rows, all
candidates of eq. 5 at once with autograd on. :mod:`benchmarks.speed` times :class:`torch_arcad.ArcAD` against it, and
the tests check that both compute the same terms. It is deliberately independent of the library: only
:func:`torch_arcad.get_preset` is used, for the paper's settings.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torch_arcad import get_preset

__all__ = [
    "PAPER",
    "LAMBDA",
    "LiteralOutput",
    "SinkhornFn",
    "literal_sinkhorn",
    "literal_focal_loss",
    "literal_discriminator",
    "literal_arcad_step",
]

PAPER = get_preset("paper")
#: eq. 10 weights (lambda_1 = lambda_2 = lambda_3).
LAMBDA = 0.1
#: Discriminator widths of the library (Linear(D, D / 1.5) - LeakyReLU(0.2) - Linear(., 1, bias=False)).
HIDDEN_RATIO = 1.5
NEGATIVE_SLOPE = 0.2

#: ``(scores (N, K), epsilon, iterations) -> Q (N, K)``.
SinkhornFn = Callable[[Tensor, float, int], Tensor]


class LiteralOutput(NamedTuple):
    """Result of :func:`literal_arcad_step`: the eq. 10 total without L_recon, each term (scalars) and the
    (K, D) prototypes after the EMA step."""

    loss: Tensor
    spm: Tensor
    dgc: Tensor
    cls: Tensor
    prototypes: Tensor


@torch.no_grad()
def literal_sinkhorn(scores: Tensor, epsilon: float, iterations: int) -> Tensor:
    """Eq. 3 as the released code computes it: SwAV's exp-domain loop, ``exp(S / epsilon)`` without shift, in float32.

    Transcribed from SwAV's ``distributed_sinkhorn`` (single process): the plan is held transposed, (K, N), and
    each round divides in place by the prototype sums and by K, then by the sample sums and by N.

    Args:
        scores: (N, K) similarities.
        epsilon: entropic regularisation.
        iterations: rounds of (prototype sums to 1/K, sample sums to 1/N).

    Returns:
        (N, K) float32 plan whose rows sum to 1 and whose columns tend to N/K. Overflows once
        ``max(S) / epsilon`` exceeds about 88.
    """
    q = torch.exp(scores.float() / epsilon).t()  # (K, N)
    q /= q.sum()
    num_prototypes, num_samples = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= num_prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= num_samples
    q *= num_samples
    return q.t()


def literal_focal_loss(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """Binary focal loss (Lin et al.) per element: ``-alpha_t (1 - p_t)^gamma log p_t``.

    Args:
        logits: (N,) float32.
        targets: (N,) float32 in {0, 1}.

    Returns:
        (N,) float32 losses.
    """
    p = torch.sigmoid(logits)
    log_pt = -F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    pt = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return -alpha_t * (1 - pt) ** gamma * log_pt


def literal_discriminator(dim: int) -> nn.Sequential:
    """The 2-layer MLP of section 3.4 with the library's widths; its state dict matches
    ``FocalDiscriminator(dim).net``."""
    hidden = max(1, int(dim / HIDDEN_RATIO))
    return nn.Sequential(nn.Linear(dim, hidden), nn.LeakyReLU(NEGATIVE_SLOPE), nn.Linear(hidden, 1, bias=False))


def literal_arcad_step(
    features: Tensor,
    masks: Tensor,
    labels: Tensor,
    prototypes: Tensor,
    discriminator: nn.Module,
    *,
    num_candidates: int,
    sigma: float = PAPER.sigma,
    prefix_tokens: int,
    generator: torch.Generator | None = None,
    sinkhorn: SinkhornFn = literal_sinkhorn,
) -> LiteralOutput:
    """Eq. 3-9 (and the EMA M-step) transcribed literally, with the paper preset's settings.

    Boolean masks select the normal features Z (patches of label-0 images) and the real anomalies (eq. 7);
    eq. 3 is the exp-domain Sinkhorn of :func:`literal_sinkhorn`; all N_normal x N_cand x D candidates of eq. 5
    exist at once with autograd on; eq. 8 forms the full M x S anomaly-synthetic similarity matrix (the synthetic
    features detached there, as in the released code); eq. 9 is one focal-loss mean over cat(Z, A_syn, A_hat).

    Args:
        features: (B, prefix + h*w, D) bottleneck tokens.
        masks: (B, H, W) 0/1 masks at image resolution.
        labels: (B,) image labels, non-zero for defective images.
        prototypes: (K, D) unit prototypes (constants).
        discriminator: module mapping (n, D) to (n, 1) logits.
        num_candidates: N_cand of eq. 6.
        sigma: noise standard deviation of eq. 5.
        prefix_tokens: leading non-patch tokens to drop.
        generator: random generator for the noise, on the features' device.
        sinkhorn: ``(scores (N, K), epsilon, iterations) -> Q (N, K)``; :func:`literal_sinkhorn` unless another
            solver is swapped in to isolate its effect.

    Returns:
        :class:`LiteralOutput`.
    """
    patches = features[:, prefix_tokens:]
    batch, num_patches, dim = patches.shape
    side = math.isqrt(num_patches)
    z_all = F.normalize(patches, dim=-1)
    patch_mask = F.adaptive_max_pool2d(masks.unsqueeze(1).float(), (side, side)).flatten(1) > 0.5
    defective = labels != 0
    z = z_all[~defective].reshape(-1, dim)  # Z, the normal features
    anomalies = z_all[defective][patch_mask[defective]]  # eq. 7, (M, D)

    # Eq. 3-4 with the pre-update prototypes.
    q = sinkhorn((z @ prototypes.t()).detach(), PAPER.epsilon, PAPER.sinkhorn_iterations)
    spm = -(q * torch.log_softmax(z @ prototypes.t() / PAPER.temperature, dim=1)).sum(dim=1).mean()

    # EMA M-step toward normalize(Q^T z).
    with torch.no_grad():
        target = F.normalize(q.t() @ z, dim=1)
        updated = F.normalize(PAPER.momentum * prototypes + (1 - PAPER.momentum) * target, dim=1)

    # Eq. 5-6: every candidate of every anchor at once, autograd on.
    noise = torch.randn(
        (z.shape[0], num_candidates, dim), generator=generator, device=z.device, dtype=z.dtype
    ) * sigma
    candidates = F.normalize(z.unsqueeze(1) + noise, dim=2)
    pick = (candidates @ prototypes.t()).amax(dim=2).argmin(dim=1)
    synthetic = candidates[torch.arange(z.shape[0], device=z.device), pick]

    # Eq. 8 with the full M x S similarity matrix.
    push = (anomalies @ prototypes.t()).amax(dim=1)
    pull = (anomalies @ synthetic.detach().t()).mean(dim=1)
    dgc = (push + (1 - pull)).mean()

    # Eq. 9 over the union of the three sets.
    inputs = torch.cat([z, synthetic, anomalies])
    targets = torch.cat(
        [z.new_zeros(z.shape[0]), z.new_ones(synthetic.shape[0]), z.new_ones(anomalies.shape[0])]
    )
    logits = discriminator(inputs).squeeze(1)
    cls = literal_focal_loss(logits, targets, PAPER.alpha, PAPER.gamma).mean()

    loss = LAMBDA * spm + LAMBDA * dgc + LAMBDA * cls
    return LiteralOutput(loss, spm, dgc, cls, updated)

