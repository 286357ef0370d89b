"""Defect-guided calibration loss, eq. 7-8."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import check_dim, check_rank

__all__ = ["defect_guided_loss"]


def defect_guided_loss(
    anomalies: Tensor,
    prototypes: Tensor,
    synthetic: Tensor,
    *,
    anomaly_weight: Tensor | None = None,
    synthetic_weight: Tensor | None = None,
    clamp_push: bool = False,
    similarities: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Eq. 8 over the l2-normalised real anomaly features (eq. 7).

    .. math:: \mathcal{L}_{dgc} = \mathbb{E}_{a}\Big[\max_k a^\top\mu_k
              + \Big(1 - \frac{1}{|\mathcal{A}_{syn}|}\sum_s a^\top a_s\Big)\Big]

    The pull term is linear in the synthetic set, so it is computed as ``a . mean_s(a_s)``: O((M + S) D) instead
    of the O(M S D) of the literal double sum.

    Args:
        anomalies: (M, D) real anomaly features (normalised here, eq. 7); M may be 0.
        prototypes: (K, D) unit-norm prototypes (constants).
        synthetic: (S, D) pseudo-anomalies; their mean is taken as given (detach them before if they must not
            receive gradient, as :class:`~torch_arcad.ArcAD` does).
        anomaly_weight: optional (M,) weights; the mean becomes ``sum w_m L_m / max(sum w_m, 1)``.
        synthetic_weight: optional (S,) weights of the synthetic mean (``sum w_s a_s / max(sum w_s, 1)``).
        clamp_push: apply ``relu`` to the push term (the released code); the paper has none.
        similarities: optional (M, K) similarities ``a mu^T`` of the l2-normalised anomalies that the caller
            already has (e.g. the matmul of eq. 3-4, computed for every patch). The push term is then read from
            them, ``max_k similarities``, and its gradient flows back through them, so no second (M, K, D)
            matmul is done. They must come from the normalised anomalies for the value to be eq. 8's.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` ((M,) per-anomaly terms, unweighted).

    Returns:
        Scalar float32 loss. With M = 0 it is an exact zero that is still connected to ``anomalies`` (its
        gradient is zero, never NaN).
    """
    check_rank("anomalies", anomalies, 2, "(M, D)")
    check_rank("prototypes", prototypes, 2, "(K, D)")
    check_rank("synthetic", synthetic, 2, "(S, D)")
    check_dim("prototypes", prototypes, 1, anomalies.shape[1], "(K, D) with D = anomalies.shape[1]")
    check_dim("synthetic", synthetic, 1, anomalies.shape[1], "(S, D) with D = anomalies.shape[1]")
    with torch.autocast(device_type=anomalies.device.type, enabled=False):
        a = F.normalize(anomalies.float(), dim=1)
        mu = prototypes.detach().float()
        if similarities is not None:
            if similarities.shape != (a.shape[0], mu.shape[0]):
                raise ValueError(
                    f"similarities must have shape (M, K) = ({a.shape[0]}, {mu.shape[0]}), "
                    f"got {tuple(similarities.shape)}"
                )
            push = similarities.float().amax(dim=1)
        else:
            push = (a @ mu.t()).amax(dim=1)
        if clamp_push:
            push = push.clamp_min(0)
        syn = synthetic.float()
        if synthetic_weight is None:
            syn_mean = syn.sum(dim=0) / max(syn.shape[0], 1)
        else:
            syn_mean = (synthetic_weight.float().unsqueeze(1) * syn).sum(dim=0) / synthetic_weight.float().sum().clamp_min(1)
        per_anomaly = push + (1 - a @ syn_mean)
    if reduction == "none":
        return per_anomaly
    if anomaly_weight is not None:
        per_anomaly = per_anomaly * anomaly_weight
    if reduction == "sum":
        return per_anomaly.sum()
    if reduction != "mean":
        raise ValueError(f"reduction must be one of ('none', 'mean', 'sum'), got {reduction!r}")
    denominator = anomaly_weight.sum().clamp_min(1) if anomaly_weight is not None else max(a.shape[0], 1)
    return per_anomaly.sum() / denominator
