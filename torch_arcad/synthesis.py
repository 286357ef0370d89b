"""Prototype-restricted anomaly synthesis (section 3.3, eq. 5-6) as a module."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._validation import check_positive
from .functional.synthesis import DEFAULT_CHUNK_ELEMENTS, synthesize_pseudo_anomalies

__all__ = ["HypersphereAnomalySynthesizer"]


class HypersphereAnomalySynthesizer(nn.Module):
    """Pseudo-anomalies near the normal manifold: per anchor, the noisy candidate farthest from all prototypes.

    Holds the defaults of :func:`~torch_arcad.functional.synthesize_pseudo_anomalies`; it has no parameters
    and no state.

    Args:
        sigma: noise standard deviation of eq. 5 (not given in the paper; 0.015 in the released code).
        num_candidates: N_cand of eq. 6 (paper 5, released code 50).
        detach: return pseudo-anomalies without gradient to their anchors. The released code keeps the
            gradient (the default here), so L_cls also shapes the bottleneck through the synthetic features.
        chunk_elements: memory bound of the candidate search, in elements.
    """

    def __init__(
        self,
        sigma: float = 0.015,
        num_candidates: int = 5,
        *,
        detach: bool = False,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    ) -> None:
        super().__init__()
        check_positive("sigma", sigma, allow_zero=True)
        if num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
        self.sigma = sigma
        self.num_candidates = num_candidates
        self.detach = detach
        self.chunk_elements = chunk_elements

    def extra_repr(self) -> str:
        return (
            f"sigma={self.sigma}, num_candidates={self.num_candidates}, "
            f"detach={self.detach}"
        )

    def forward(self, anchors: Tensor, prototypes: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Synthesize one pseudo-anomaly per anchor.

        Args:
            anchors: (N, D) unit-norm normal features.
            prototypes: (K, D) unit-norm prototypes.
            generator: optional random generator on the anchors' device.

        Returns:
            (N, D) unit-norm pseudo-anomalies.
        """
        return synthesize_pseudo_anomalies(
            anchors,
            prototypes,
            sigma=self.sigma,
            num_candidates=self.num_candidates,
            generator=generator,
            detach=self.detach,
            chunk_elements=self.chunk_elements,
        )
