"""Focal discriminator (section 3.4, eq. 9)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._validation import check_choice, check_dim, check_rank
from .functional.focal import binary_focal_loss_with_logits

__all__ = ["FocalDiscriminator"]

#: Hidden width of the released code's discriminator relative to D (Linear(D, D / 1.5)).
_HIDDEN_RATIO = 1.5
_NEGATIVE_SLOPE = 0.2
#: The released code's eq. 9: 0.5 (FL_normal + FL_synthetic) + FL_real.
_BALANCED = (0.5, 0.5, 1.0)
#: How eq. 9's expectation is taken (see :class:`FocalDiscriminator`).
WEIGHTINGS: tuple[str, ...] = ("union", "balanced")


class FocalDiscriminator(nn.Module):
    """Two-layer MLP giving one logit per feature, trained with the binary focal loss of eq. 9.

    ``Linear(D, H) -> [BatchNorm1d(H)] -> LeakyReLU(0.2) -> Linear(H, 1, bias=False)``, with H = D / 1.5 by
    default (the released code's widths). Batch normalisation is the released code's choice (``norm="batch"``);
    ``norm="none"`` gives the plain 2-layer MLP of the paper, which needs no synchronised statistics under DDP.

    Eq. 9 has three groups: normal features (target 0), pseudo-anomalies and real anomalies (target 1).
    :meth:`group_sums` gives each group's focal sum, :meth:`combine_groups` turns the sums and counts into eq. 9's
    weighted means, and :meth:`loss` does both for three given feature sets.

    Args:
        dim: feature dimension D.
        hidden_dim: H (default ``int(D / 1.5)``).
        alpha: focal weight of the positives (anomalies).
        gamma: focal exponent.
        norm: ``"none"`` or ``"batch"``.
        weighting: how eq. 9's expectation is taken: ``"union"`` (the paper: one mean over normal, synthetic and
            real features together) or ``"balanced"`` (the released code: 0.5 (FL_normal + FL_synthetic) +
            FL_real, each a mean).
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int | None = None,
        *,
        alpha: float = 0.75,
        gamma: float = 2.0,
        norm: str = "none",
        weighting: str = "union",
    ) -> None:
        super().__init__()
        check_choice("norm", norm, ("none", "batch"))
        check_choice("weighting", weighting, WEIGHTINGS)
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        hidden = hidden_dim if hidden_dim is not None else max(1, int(dim / _HIDDEN_RATIO))
        self.dim = dim
        self.alpha = alpha
        self.gamma = gamma
        self.weighting = weighting
        layers: list[nn.Module] = [nn.Linear(dim, hidden)]
        if norm == "batch":
            layers.append(nn.BatchNorm1d(hidden))
        layers += [nn.LeakyReLU(_NEGATIVE_SLOPE), nn.Linear(hidden, 1, bias=False)]
        self.net = nn.Sequential(*layers)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, weighting={self.weighting!r}"

    def forward(self, x: Tensor) -> Tensor:
        """One anomaly logit per row.

        Args:
            x: (N, D) features.

        Returns:
            (N,) logits (positive = anomalous), in the weights' (or the autocast) dtype.
        """
        check_rank("x", x, 2, "(N, D)")
        check_dim("x", x, 1, self.dim, "(N, D)")
        # The input follows the weights' dtype (e.g. after .half()); under autocast the layers cast anyway.
        return self.net(x.to(self.net[0].weight.dtype)).squeeze(1)

    def group_sums(self, logits: Tensor, targets: Tensor, weights: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
        """Eq. 9's per-group focal sums, for callers that take the means themselves (e.g. globally under DDP).

        Args:
            logits: (N,) logits of all rows.
            targets: (N,) 0/1 targets.
            weights: (G, N) weight of each row in each group (0 outside the group).
            counts: (G,) what each group's mean divides by.

        Returns:
            ``(sums, counts)``: (G,) float32 weighted focal sums, and ``counts`` as float32.
        """
        check_rank("logits", logits, 1, "(N,)")
        check_rank("weights", weights, 2, "(G, N)")
        if targets.shape != logits.shape or weights.shape[1] != logits.shape[0]:
            raise ValueError(
                f"targets must have shape (N,) and weights (G, N) with N = {logits.shape[0]}, got "
                f"{tuple(targets.shape)} and {tuple(weights.shape)}"
            )
        per_row = binary_focal_loss_with_logits(logits, targets, self.alpha, self.gamma, reduction="none")
        return (weights.float() * per_row).sum(dim=1), counts.float()

    def combine_groups(self, sums: Tensor, counts: Tensor) -> tuple[Tensor, Tensor, tuple[float, ...]]:
        """Turn the three groups' sums and counts (3,) into the means eq. 9 takes, following ``weighting``.

        Returns:
            ``(term_sums, term_counts, coefficients)``: eq. 9 is ``sum_t c_t * term_sums[t] / term_counts[t]``.
            ``"union"`` has one term (all groups pooled), ``"balanced"`` three with coefficients 0.5, 0.5, 1.
        """
        if self.weighting == "balanced":
            return sums, counts, _BALANCED
        return sums.sum().unsqueeze(0), counts.sum().unsqueeze(0), (1.0,)

    def loss(
        self,
        normal: Tensor,
        synthetic: Tensor,
        anomalies: Tensor,
        *,
        normal_weight: Tensor | None = None,
        synthetic_weight: Tensor | None = None,
        anomaly_weight: Tensor | None = None,
    ) -> Tensor:
        """Eq. 9: focal loss with label 0 for normal features and 1 for synthetic and real anomalies.

        The three groups pass through the MLP in one batch (one set of batch-norm statistics).

        Args:
            normal: (N, D) normal features.
            synthetic: (S, D) pseudo-anomalies.
            anomalies: (M, D) real anomaly features (M may be 0).
            normal_weight, synthetic_weight, anomaly_weight: optional per-row weights (masks) of each group; a
                group's mean divides by the sum of its weights.

        Returns:
            Scalar float32 loss.
        """
        groups = (normal, synthetic, anomalies)
        for name, x in zip(("normal", "synthetic", "anomalies"), groups):
            check_rank(name, x, 2, "(N, D)")
            check_dim(name, x, 1, self.dim, "(N, D)")
        logits = self(torch.cat(groups))
        own = [
            (weight.float() if weight is not None else x.new_ones(x.shape[0], dtype=torch.float32)).unsqueeze(0)
            for x, weight in zip(groups, (normal_weight, synthetic_weight, anomaly_weight))
        ]
        weights = torch.block_diag(*own)  # (3, N + S + M): row g holds group g's weights, zero elsewhere
        targets = torch.cat([logits.new_zeros(normal.shape[0]), logits.new_ones(synthetic.shape[0] + anomalies.shape[0])])
        sums, counts = self.group_sums(logits, targets, weights, weights.sum(dim=1))
        term_sums, term_counts, coefficients = self.combine_groups(sums, counts)
        means = term_sums / term_counts.clamp_min(1)
        return sum(c * m for c, m in zip(coefficients, means))
