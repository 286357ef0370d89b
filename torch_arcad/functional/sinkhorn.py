r"""Balanced Sinkhorn-Knopp assignment, eq. 3 of the paper.

Two exact forms of the same iteration are implemented; :func:`sinkhorn_knopp` picks one on the host from its
arguments (never from the data):

* **exp domain** (fast): when the caller states a bound ``|S| <= b`` (``score_bound``; cosine similarities have
  ``b = 1``) and ``epsilon`` is large enough for that bound (:func:`exp_domain_is_safe`). The plan is invariant to
  a global shift of the scores, so the kernel is formed as ``M = exp((S - b) / epsilon)``, whose entries lie in
  ``[exp(-2b / epsilon), 1]``: nothing overflows, and the scalings are done in place on one (N, K) buffer.
* **log domain** (any finite scores, any ``epsilon > 0``): every scaling is the subtraction of a ``logsumexp``.

When the exp domain is safe
---------------------------
Write ``B = 2b / epsilon`` and ``tiny = torch.finfo(torch.float32).tiny`` (the smallest normal float32). With
``|S| <= b`` every entry of ``M`` is in ``[exp(-B), 1]`` and every column sums to at most N (the number of rows
taking part). The first column step multiplies column j by ``(N / K) / colsum_j >= 1 / K``, so afterwards every
row still holds an entry ``>= exp(-B) / K``. From then on every sum stays in ``[1 / K, N]``: a row step leaves rows
of mass 1, hence entries ``<= 1``, column sums ``<= N`` and column factors ``>= 1 / K``, so the next rows sum to
``>= 1 / K``; a column step leaves entries ``<= N / K``, hence row sums ``<= N``, row factors ``>= 1 / N`` and next
column sums ``>= 1 / K``. So no sum underflows, and the kernel itself is made of normal floats (full precision),
exactly when ``exp(-B) / K >= tiny``::

    epsilon >= 2 b / (log(1 / tiny) - log K)

In float32 ``log(1 / tiny) = 87.34``; for ``b = 1`` this is ``epsilon >= 0.0229`` at K = 1 and ``epsilon >= 0.0247``
at K = 500 (the default ``epsilon = 0.05`` has a margin of 2x). A single entry may still fall below ``tiny`` later;
it is then less than ``tiny * K`` of its row's and column's sums (both ``>= 1 / K``), so losing its precision changes
no sum and no plan entry beyond float32 rounding.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

from .._validation import check_positive, check_rank
from ..distributed import all_reduce_sum, global_logsumexp

__all__ = ["sinkhorn_knopp", "exp_domain_is_safe", "min_exp_domain_epsilon"]

#: Working dtype of both paths; the exp-domain bound is derived from its smallest normal number.
WORKING_DTYPE = torch.float32
#: log(1 / tiny) of the working dtype: the largest B = 2b/epsilon with exp(-B) still a normal float (87.34).
_LOG_INVERSE_TINY = -math.log(torch.finfo(WORKING_DTYPE).tiny)


def min_exp_domain_epsilon(score_bound: float, num_prototypes: int) -> float:
    """Smallest ``epsilon`` for which the exp-domain iteration is exact on scores with ``|S| <= score_bound``.

    ``2 b / (log(1 / tiny) - log K)`` with ``tiny`` the smallest normal float32 (derivation in the module
    docstring); about ``0.0247 * b`` for K = 500. ``inf`` when K is so large that no ``epsilon`` qualifies.
    """
    headroom = _LOG_INVERSE_TINY - math.log(max(num_prototypes, 1))
    if headroom <= 0:
        return math.inf
    return 2.0 * score_bound / headroom


def exp_domain_is_safe(epsilon: float, score_bound: float | None, num_prototypes: int) -> bool:
    """Whether :func:`sinkhorn_knopp` takes the exp-domain path: a bound is known and ``epsilon`` is large enough.

    Decided from host numbers only (no tensor is read), so every process of a distributed job takes the same path.
    """
    if score_bound is None:
        return False
    return epsilon >= min_exp_domain_epsilon(score_bound, num_prototypes)


@torch.no_grad()
def sinkhorn_knopp(
    scores: Tensor,
    epsilon: float = 0.05,
    iterations: int = 3,
    *,
    mask: Tensor | None = None,
    gather_distributed: bool = False,
    group: dist.ProcessGroup | None = None,
    score_bound: float | None = None,
) -> Tensor:
    r"""Entropic balanced transport plan between N samples and K prototypes (eq. 3).

    Computes :math:`Q = \mathrm{diag}(u)\,\exp(S/\epsilon)\,\mathrm{diag}(v)` by alternately scaling the columns
    to mass N/K and the rows to mass 1, ending with the rows. With ``score_bound`` given and ``epsilon`` at least
    :func:`min_exp_domain_epsilon` (about ``0.025 * score_bound``) the iteration runs in place on
    ``exp((S - score_bound) / epsilon)``; otherwise it runs on ``log Q`` (every scaling is the subtraction of a
    ``logsumexp``), which is finite for any finite scores and any ``epsilon > 0``. Both give the same plan up to
    float32 rounding; the choice depends on the arguments only (see the module docstring), never on the data.

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
        score_bound: ``b > 0`` with ``|S| <= b`` for every (unmasked) score, e.g. 1.0 for cosine similarities of
            unit vectors (float32 rounding beyond it is harmless), or None when no bound is known. A bound the
            scores violate by more than rounding can overflow the exp-domain path.

    Returns:
        (N, K) float32 plan Q, without gradient. Every (unmasked) row sums to 1 at any iteration count; every
        column sum tends to N/K as ``iterations`` grows. Computed in float32 whatever the input dtype or autocast
        state.

    Raises:
        ValueError: if ``scores`` is not 2-d, ``epsilon <= 0``, ``iterations < 0``, ``score_bound <= 0`` or
            ``mask`` has the wrong shape.
    """
    check_rank("scores", scores, 2, "(N, K)")
    check_positive("epsilon", epsilon)
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if score_bound is not None:
        check_positive("score_bound", score_bound)
    num_rows, num_cols = scores.shape
    if mask is not None and (mask.dim() != 1 or mask.shape[0] != num_rows):
        raise ValueError(f"mask must have shape (N,) = ({num_rows},), got {tuple(mask.shape)}")

    with torch.autocast(device_type=scores.device.type, enabled=False):
        valid = None if mask is None else mask.to(device=scores.device, dtype=torch.bool).unsqueeze(1)
        if valid is None:
            rows = torch.full((), float(num_rows), device=scores.device)
        else:
            rows = valid.sum(dtype=WORKING_DTYPE)
        if gather_distributed:
            rows = all_reduce_sum(rows.clone(), group)
        if score_bound is not None and exp_domain_is_safe(epsilon, score_bound, num_cols):
            return _sinkhorn_exp(scores, epsilon, iterations, score_bound, valid, rows, gather_distributed, group)
        return _sinkhorn_log(scores, epsilon, iterations, valid, rows, gather_distributed, group)


def _sinkhorn_exp(
    scores: Tensor,
    epsilon: float,
    iterations: int,
    score_bound: float,
    valid: Tensor | None,
    rows: Tensor,
    distributed: bool,
    group: dist.ProcessGroup | None,
) -> Tensor:
    """The iteration on ``exp((S - b) / epsilon)``, scaled in place: one (N, K) buffer, one pass per scaling."""
    tiny = torch.finfo(WORKING_DTYPE).tiny
    q = torch.sub(scores.to(WORKING_DTYPE), score_bound).div_(epsilon).exp_()
    if valid is not None:
        q.masked_fill_(~valid, 0.0)  # a fill, not a product: masked rows may hold non-finite scores
    column_mass = rows / scores.shape[1]
    for _ in range(iterations):
        column_sums = q.sum(dim=0)
        if distributed:
            column_sums = all_reduce_sum(column_sums, group)
        # the clamp only acts on columns without any unmasked row (sum 0), which then stay 0 instead of NaN
        q.mul_(column_mass / column_sums.clamp_min(tiny))
        q.div_(q.sum(dim=1, keepdim=True).clamp_min(tiny))  # masked rows: 0 / tiny = 0
    if iterations == 0:
        q.div_(q.sum(dim=1, keepdim=True).clamp_min(tiny))
    return q


def _sinkhorn_log(
    scores: Tensor,
    epsilon: float,
    iterations: int,
    valid: Tensor | None,
    rows: Tensor,
    distributed: bool,
    group: dist.ProcessGroup | None,
) -> Tensor:
    """The iteration on ``log Q``: finite for any finite scores and any ``epsilon > 0``."""
    num_rows, num_cols = scores.shape
    # No shift is needed: every normalisation is a logsumexp, which is stable by itself. (A per-row shift
    # would change the finite-iteration iterates, since the first scaling is over columns.)
    log_q = scores.to(WORKING_DTYPE) / epsilon
    neg_inf = -math.inf
    if valid is not None:
        log_q = torch.where(valid, log_q, neg_inf)
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
