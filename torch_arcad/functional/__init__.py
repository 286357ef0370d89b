"""Stateless functions: the equations of the paper, one per function."""

from .calibration import defect_guided_loss
from .focal import binary_focal_loss_with_logits
from .prototypes import ema_prototypes, spherical_kmeans, spm_loss, spm_loss_from_similarities
from .sinkhorn import sinkhorn_knopp
from .synthesis import synthesize_pseudo_anomalies

__all__ = [
    "sinkhorn_knopp",
    "spm_loss",
    "spm_loss_from_similarities",
    "spherical_kmeans",
    "ema_prototypes",
    "synthesize_pseudo_anomalies",
    "defect_guided_loss",
    "binary_focal_loss_with_logits",
]
