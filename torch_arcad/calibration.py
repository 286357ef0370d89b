"""Defect-guided calibration (section 3.3, eq. 7-8) as a module."""

from __future__ import annotations

from torch import Tensor, nn

from .functional.calibration import defect_guided_loss

__all__ = ["DefectGuidedLoss"]


class DefectGuidedLoss(nn.Module):
    """L_dgc of eq. 8: push real anomalies from their nearest prototype, pull them toward the pseudo-anomalies.

    Args:
        clamp_push: ``relu`` on the push term, as the released code does (the paper has none).
    """

    def __init__(self, *, clamp_push: bool = False) -> None:
        super().__init__()
        self.clamp_push = clamp_push

    def extra_repr(self) -> str:
        return f"clamp_push={self.clamp_push}"

    def forward(
        self,
        anomalies: Tensor,
        prototypes: Tensor,
        synthetic: Tensor,
        *,
        anomaly_weight: Tensor | None = None,
        synthetic_weight: Tensor | None = None,
        similarities: Tensor | None = None,
        reduction: str = "mean",
    ) -> Tensor:
        """Eq. 8 over the l2-normalised anomalies.

        Args:
            anomalies: (M, D) real anomaly features (M may be 0: the loss is then a zero that backpropagates).
            prototypes: (K, D) unit-norm prototypes.
            synthetic: (S, D) pseudo-anomalies.
            anomaly_weight: optional (M,) weights (masking) of the anomalies.
            synthetic_weight: optional (S,) weights (masking) of the synthetic mean.
            similarities: optional (M, K) similarities of the normalised anomalies to ``prototypes`` that the
                caller already has (eq. 4's matmul); the push term is then read from them.
            reduction: ``"mean"``, ``"sum"`` (for callers that take the mean themselves, e.g. globally under DDP)
                or ``"none"`` ((M,) per-anomaly terms).

        Returns:
            Scalar float32 loss ((M,) with ``reduction="none"``).
        """
        return defect_guided_loss(
            anomalies,
            prototypes,
            synthetic,
            anomaly_weight=anomaly_weight,
            synthetic_weight=synthetic_weight,
            clamp_push=self.clamp_push,
            similarities=similarities,
            reduction=reduction,
        )
