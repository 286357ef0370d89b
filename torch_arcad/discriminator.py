"""Focal discriminator (section 3.4, eq. 9)."""

from __future__ import annotations

import math

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
#: Class-balanced weighting: one half for the negatives, one half for the positives.
_CLASSES = (0.5, 0.5)
#: How eq. 9's expectation is taken (see :class:`FocalDiscriminator`).
WEIGHTINGS: tuple[str, ...] = ("union", "balanced", "classes")


class FocalDiscriminator(nn.Module):
    """Two-layer MLP giving one logit per feature, trained with the binary focal loss of eq. 9.

    ``Linear(D, H) -> [BatchNorm1d(H)] -> LeakyReLU(0.2) -> Linear(H, 1, bias=False)``, with H = D / 1.5 by
    default (the released code's widths). Batch normalisation is the released code's choice (``norm="batch"``);
    ``norm="none"`` gives the plain 2-layer MLP of the paper, which needs no synchronised statistics under DDP.

    Args:
        dim: feature dimension D.
        hidden_dim: H (default ``int(D / 1.5)``).
        alpha: focal weight of the positives (anomalies).
        gamma: focal exponent.
        norm: ``"none"`` or ``"batch"``.
        weighting: how eq. 9's expectation is taken: ``"union"`` (the paper: one mean over normal, synthetic and
            real features together), ``"balanced"`` (the released code: 0.5 (FL_normal + FL_synthetic) +
            FL_real, each a mean) or ``"classes"`` (class-balanced: 0.5 FL_negatives + 0.5 FL_positives, the
            normal features against the synthetic and real anomalies pooled, each a mean; an option of this
            library, not of the paper).
        distance_scale: ``None`` (default, the paper: the logit is the MLP's alone) or a positive distance ``s``:
            the discriminator also reads each feature's distance ``d`` to the nearest prototype, and its logit is
            ``f(x) + exp(rho) * d / s`` with ``rho`` a learned scalar (``log_distance_weight``, initialised to 0),
            so the distance enters with a non-negative weight: moving away from every prototype never lowers the
            logit through this term. :class:`~torch_arcad.ArcAD` sets ``s`` to the distance of a pseudo-anomaly
            from its anchor (``discriminator_distance=True``). An option of this library, not of the paper.
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
        distance_scale: float | None = None,
    ) -> None:
        super().__init__()
        check_choice("norm", norm, ("none", "batch"))
        check_choice("weighting", weighting, WEIGHTINGS)
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if distance_scale is not None and (
            isinstance(distance_scale, bool)
            or not isinstance(distance_scale, (int, float))
            or not math.isfinite(distance_scale)
            or distance_scale <= 0
        ):
            raise ValueError(f"distance_scale must be None or a finite number > 0, got {distance_scale!r}")
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
        self.distance_scale = None if distance_scale is None else float(distance_scale)
        if distance_scale is None:
            self.register_parameter("log_distance_weight", None)
        else:
            self.log_distance_weight = nn.Parameter(torch.zeros(()))

    @property
    def reads_distance(self) -> bool:
        """Whether the logit has the distance term (``distance_scale`` given): then every call needs ``distance``."""
        return self.distance_scale is not None

    def extra_repr(self) -> str:
        text = f"alpha={self.alpha}, gamma={self.gamma}, weighting={self.weighting!r}"
        return text if self.distance_scale is None else f"{text}, distance_scale={self.distance_scale:.4g}"

    def distance_logit(self, distance: Tensor) -> Tensor:
        """The distance term ``exp(rho) * d / s`` of the logit.

        Args:
            distance: (N,) distances to the nearest prototype (``1 - max_k x . mu_k``).

        Returns:
            (N,) in the weight's dtype.
        """
        if self.distance_scale is None:
            raise ValueError("this discriminator reads no distance: build it with distance_scale=...")
        check_rank("distance", distance, 1, "(N,)")
        return self.log_distance_weight.exp() * distance.to(self.log_distance_weight.dtype) / self.distance_scale

    def forward(self, x: Tensor, distance: Tensor | None = None) -> Tensor:
        """One anomaly logit per row.

        Args:
            x: (N, D) features.
            distance: (N,) distance of each row to the nearest prototype; required when the discriminator reads
                it (``distance_scale`` given), refused otherwise.

        Returns:
            (N,) logits (positive = anomalous), in the weights' (or the autocast) dtype.
        """
        check_rank("x", x, 2, "(N, D)")
        check_dim("x", x, 1, self.dim, "(N, D)")
        # The input follows the weights' dtype (e.g. after .half()); under autocast the layers cast anyway.
        logits = self.net(x.to(self.net[0].weight.dtype)).squeeze(1)
        return self.add_distance(logits, distance)

    def add_distance(self, logits: Tensor, distance: Tensor | None) -> Tensor:
        """``logits`` (N,) plus the distance term when the discriminator reads it; checks ``distance`` (N,)."""
        if self.distance_scale is None:
            if distance is not None:
                raise ValueError("this discriminator reads no distance (distance_scale=None); call it without one")
            return logits
        if distance is None:
            raise ValueError("this discriminator reads the distance to the prototypes: pass distance, shape (N,)")
        if distance.shape != logits.shape:
            raise ValueError(f"distance must have shape (N,) = {tuple(logits.shape)}, got {tuple(distance.shape)}")
        return logits + self.distance_logit(distance).to(logits.dtype)

    def loss_terms(
        self,
        normal: Tensor,
        synthetic: Tensor,
        anomalies: Tensor,
        *,
        normal_weight: Tensor | None = None,
        synthetic_weight: Tensor | None = None,
        anomaly_weight: Tensor | None = None,
        distances: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Per-group focal sums and counts, for callers that normalise globally (e.g. under DDP).

        The three groups go through the MLP in one batch (one set of batch-norm statistics). ``distances``: the
        (N,), (S,), (M,) distances of the three groups to the nearest prototype, when the discriminator reads them.

        Returns:
            ``(sums, counts)``, each (3,) float32: normal, synthetic, anomalies.
        """
        groups = (normal, synthetic, anomalies)
        weights = (normal_weight, synthetic_weight, anomaly_weight)
        for name, x in zip(("normal", "synthetic", "anomalies"), groups):
            check_rank(name, x, 2, "(N, D)")
            check_dim(name, x, 1, self.dim, "(N, D)")
        distance = None if distances is None else torch.cat(list(distances))
        logits = self(torch.cat(groups), distance).split([g.shape[0] for g in groups])
        sums, counts = [], []
        for logit, target, weight in zip(logits, (0.0, 1.0, 1.0), weights):
            per_row = binary_focal_loss_with_logits(
                logit, torch.full_like(logit, target), self.alpha, self.gamma, reduction="none", weight=weight
            )
            sums.append(per_row.sum())
            counts.append(weight.float().sum() if weight is not None else torch.full_like(per_row[:1].sum(), logit.shape[0]))
        return torch.stack(sums), torch.stack(counts)

    def combine_groups(self, sums: Tensor, counts: Tensor) -> tuple[Tensor, Tensor, tuple[float, ...]]:
        """Turn per-group sums and counts (3,) into the means eq. 9 takes, following ``weighting``.

        Returns:
            ``(term_sums, term_counts, coefficients)``: eq. 9 is ``sum_t c_t * term_sums[t] / term_counts[t]``.
            ``"union"`` has one term (all groups pooled), ``"balanced"`` three with coefficients 0.5, 0.5, 1,
            ``"classes"`` two (normal; synthetic and real pooled) with coefficients 0.5, 0.5.
        """
        if self.weighting == "balanced":
            return sums, counts, _BALANCED
        if self.weighting == "classes":  # negatives (normal) against positives (synthetic and real) pooled
            return torch.stack([sums[0], sums[1:].sum()]), torch.stack([counts[0], counts[1:].sum()]), _CLASSES
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
        distances: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Eq. 9: focal loss with label 0 for normal features and 1 for synthetic and real anomalies.

        Args:
            normal: (N, D) normal features.
            synthetic: (S, D) pseudo-anomalies.
            anomalies: (M, D) real anomaly features (M may be 0).
            normal_weight, synthetic_weight, anomaly_weight: optional per-row weights (masks) of each group.
            distances: the three groups' (N,), (S,), (M,) distances to the nearest prototype; required when the
                discriminator reads them (``distance_scale``).

        Returns:
            Scalar float32 loss.
        """
        sums, counts = self.loss_terms(
            normal,
            synthetic,
            anomalies,
            normal_weight=normal_weight,
            synthetic_weight=synthetic_weight,
            anomaly_weight=anomaly_weight,
            distances=distances,
        )
        term_sums, term_counts, coefficients = self.combine_groups(sums, counts)
        means = term_sums / term_counts.clamp_min(1)
        return sum(c * m for c, m in zip(coefficients, means))
