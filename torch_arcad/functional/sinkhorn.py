"""Balanced Sinkhorn-Knopp assignment, eq. 3 of the paper, in the log domain."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

from .._validation import check_positive, check_rank
from ..distributed import all_reduce_sum, global_logsumexp

__all__ = ["sinkhorn_knopp"]


@torch.no_grad()
def sinkhorn_knopp(
    scores: Tensor,
    epsilon: float = 0.05,
    iterations: int = 3,
    *,
    mask: Tensor | None = None,
    gather_distributed: bool = False,
    group: dist.ProcessGroup | None = None,
) -> Tensor:
    r"""Entropic balanced transport plan between N samples and K prototypes (eq. 3).

    Computes :math:`Q = \mathrm{diag}(u)\,\exp(S/\epsilon)\,\mathrm{diag}(v)` by alternately scaling the columns
    to mass N/K and the rows to mass 1, ending with the rows. The iterations run on ``log Q`` (every scaling is a
    subtraction of a ``logsumexp``), so the result is finite for any finite scores and any ``epsilon > 0``: the
    exp-domain form of the released code overflows in float32 once ``max(S)/epsilon`` exceeds about 88.

    Args:
        scores: (N, K) similarities, e.g. cosine similarities of features to prototypes; any floating dtype.
        epsilon: entropic regularisation (the temperature of ``exp(S / epsilon)``), ``> 0``.
        iterations: number of (column, row) scaling rounds, ``>= 0``. With 0 the plan is ``softmax(S / epsilon)``.
        mask: optional (N,) boolean; rows where it is False get an all-zero row and carry no mass, and the column
            target becomes (number of True rows) / K.
        gather_distributed: when True and ``torch.distributed`` is initialised with more than one process, the
            column sums (each prototype's mass) and N are taken over the rows of all processes, so each process
            receives its rows of the plan of the global batch. Read at call time; a no-op in a single process.
        group: process group for ``gather_distributed``.

    Returns:
        (N, K) float32 plan Q, without gradient. Every (unmasked) row sums to 1 at any iteration count; every
        column sum tends to N/K as ``iterations`` grows. Computed in float32 whatever the input dtype or autocast
        state.

    Raises:
        ValueError: if ``scores`` is not 2-d, ``epsilon <= 0``, ``iterations < 0`` or ``mask`` has the wrong shape.
    """
    check_rank("scores", scores, 2, "(N, K)")
    check_positive("epsilon", epsilon)
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    num_rows, num_cols = scores.shape
    if mask is not None and (mask.dim() != 1 or mask.shape[0] != num_rows):
        raise ValueError(f"mask must have shape (N,) = ({num_rows},), got {tuple(mask.shape)}")

    with torch.autocast(device_type=scores.device.type, enabled=False):
        # No shift is needed: every normalisation is a logsumexp, which is stable by itself. (A per-row shift
        # would change the finite-iteration iterates, since the first scaling is over columns.)
        log_q = scores.float() / epsilon
        neg_inf = -math.inf
        distributed = gather_distributed
        if mask is not None:
            valid = mask.to(device=scores.device, dtype=torch.bool).unsqueeze(1)
            log_q = torch.where(valid, log_q, neg_inf)
            rows = valid.sum(dtype=torch.float32)
        else:
            valid = None
            rows = torch.full((), float(num_rows), device=scores.device)
        if distributed:
            rows = all_reduce_sum(rows.clone(), group)
        if valid is None and not distributed:
            log_column_mass: Tensor | float = math.log(num_rows / num_cols)
        else:
            log_column_mass = torch.log(rows) - math.log(num_cols)

        for _ in range(iterations):
            if distributed:
                column_lse = global_logsumexp(log_q, dim=0, group=group)
            else:
                column_lse = torch.logsumexp(log_q, dim=0)
            log_q = log_q - (column_lse - log_column_mass)
            log_q = _normalize_rows(log_q)
            if valid is not None:
                # masked rows are -inf everywhere; their row step gives NaN, which is discarded here
                log_q = torch.where(valid, log_q, neg_inf)

        if iterations == 0:
            log_q = _normalize_rows(log_q)
            if valid is not None:
                log_q = torch.where(valid, log_q, neg_inf)
        return log_q.exp_()


def _normalize_rows(log_q: Tensor) -> Tensor:
    """Rows of ``exp(log_q)`` scaled to sum 1, in the log domain.

    The row maximum is subtracted first (exactly) and the log-sum taken of the shifted row: for entries near 1e7
    (scores 1e4 at epsilon 1e-3) float32 cannot represent ``max + log 2``, so subtracting ``logsumexp`` directly
    would lose the normalisation. Rows that are entirely -inf (masked) come out NaN and are replaced by the caller.
    """
    row_max = log_q.amax(dim=1, keepdim=True)
    shifted = log_q - torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    return shifted - shifted.exp().sum(dim=1, keepdim=True).log()
