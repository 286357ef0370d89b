"""Defect-guided calibration (section 3.3, eq. 7-8) as a module."""

from __future__ import annotations

from torch import Tensor, nn

from ._validation import check_push_margin
from .functional.calibration import defect_guided_loss

__all__ = ["DefectGuidedLoss"]


class DefectGuidedLoss(nn.Module):
    """L_dgc of eq. 8: push real anomalies from their nearest prototype, pull them toward the pseudo-anomalies.

    Args:
        clamp_push: ``relu`` on the push term, as the released code does (the paper has none).
        push_margin: ``None`` (eq. 8) or a cosine ``m`` in ``[-1, 1)``: the push stops once an anomaly's cosine to
            its nearest prototype is down to ``m`` (``relu(max_k a . mu_k - m)``). An option of this library.
    """

    def __init__(self, *, clamp_push: bool = False, push_margin: float | None = None) -> None:
        super().__init__()
        check_push_margin(push_margin, clamp_push)
        self.clamp_push = clamp_push
        self.push_margin = push_margin

    def extra_repr(self) -> str:
        return f"clamp_push={self.clamp_push}, push_margin={self.push_margin}"

    def forward(
        self,
        anomalies: Tensor,
        prototypes: Tensor,
        synthetic: Tensor,
        *,
        anomaly_weight: Tensor | None = None,
        synthetic_weight: Tensor | None = None,
    ) -> Tensor:
        """Eq. 8 over the l2-normalised anomalies.

        Args:
            anomalies: (M, D) real anomaly features (M may be 0: the loss is then a zero that backpropagates).
            prototypes: (K, D) unit-norm prototypes.
            synthetic: (S, D) pseudo-anomalies.
            anomaly_weight: optional (M,) weights (masking) of the anomalies.
            synthetic_weight: optional (S,) weights (masking) of the synthetic mean.

        Returns:
            Scalar float32 loss.
        """
        return defect_guided_loss(
            anomalies,
            prototypes,
            synthetic,
            anomaly_weight=anomaly_weight,
            synthetic_weight=synthetic_weight,
            clamp_push=self.clamp_push,
            push_margin=self.push_margin,
        )
