"""Collectives used by ArcAD under ``torch.distributed``.

Every helper reads the world size at call time: in a single process (or when ``torch.distributed`` is not
initialised) they reduce to the local computation and issue no collective. Nothing here synchronises the host
with the device; the collectives are enqueued on the tensors' device like any other kernel.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "get_world_size",
    "get_rank",
    "is_distributed",
    "all_reduce_max",
    "all_reduce_sum",
    "differentiable_all_reduce_sum",
    "global_logsumexp",
    "global_means",
    "all_gather_rows",
    "broadcast_",
]


def get_world_size(group: dist.ProcessGroup | None = None) -> int:
    """Number of processes in ``group``; 1 when ``torch.distributed`` is unavailable or not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group)
    return 1


def get_rank(group: dist.ProcessGroup | None = None) -> int:
    """Rank of this process in ``group``; 0 when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group)
    return 0


def is_distributed(group: dist.ProcessGroup | None = None) -> bool:
    """Whether collectives over ``group`` would involve more than this process."""
    return get_world_size(group) > 1


def all_reduce_sum(x: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Sum ``x`` over all processes, in place when distributed; returns ``x``. Not differentiable."""
    if is_distributed(group):
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
    return x


def all_reduce_max(x: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Element-wise maximum of ``x`` over all processes, in place when distributed; returns ``x``. Not
    differentiable."""
    if is_distributed(group):
        dist.all_reduce(x, op=dist.ReduceOp.MAX, group=group)
    return x


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes in the forward pass; the gradient is the sum of every process's gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, group: dist.ProcessGroup | None) -> Tensor:  # type: ignore[override]
        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def differentiable_all_reduce_sum(x: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Sum ``x`` over all processes, differentiably; returns a new tensor (``x`` itself when not distributed).

    Every process's output is the same global sum, and so every process's loss depends on every ``x``: the
    gradient reaching ``x`` is the sum over the processes of the gradients of their outputs (one ``all_reduce`` in
    the backward pass as well). This is the rule of SyncBatchNorm's statistics. It uses the blocking
    ``dist.all_reduce`` on both passes, so no asynchronous work outlives the call.

    Args:
        x: any shape, the same on every process.
        group: the process group (default: the world).
    """
    if not is_distributed(group):
        return x
    return _AllReduceSum.apply(x, group)


def global_logsumexp(x: Tensor, dim: int = 0, group: dist.ProcessGroup | None = None) -> Tensor:
    """``logsumexp`` of ``x`` along ``dim`` taken over the concatenation of every process's ``x``.

    Args:
        x: any shape; the other dimensions must agree across processes.
        dim: the dimension that is split across processes (rows of a batch).

    Returns:
        ``x.logsumexp(dim)`` of the global tensor, identical on every process. Computed as the logsumexp of the
        per-process logsumexps (one ``all_gather`` of the reduced tensor), so it never overflows.
    """
    local = torch.logsumexp(x, dim=dim)
    world = get_world_size(group)
    if world == 1:
        return local
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local.contiguous(), group=group)
    return torch.logsumexp(torch.stack(gathered), dim=0)


def global_means(sums: Tensor, counts: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Means over the global batch of terms whose per-process sums and counts are given.

    Args:
        sums: (T,) differentiable per-process sums of T loss terms.
        counts: (T,) per-process number of elements behind each sum (any real dtype, no gradient).

    Returns:
        (T,) float tensor. Its *value* is ``sum over processes of sums / sum over processes of counts`` (0 where
        the global count is 0), identical on every process. Its *gradient* is that of
        ``world_size * local_sums / global_counts``, so that DistributedDataParallel's gradient averaging yields
        exactly the gradient of the global mean. In a single process this is ``sums / counts.clamp_min(1)``.
        One ``all_reduce`` serves all T terms.
    """
    counts = counts.to(sums.dtype)
    world = get_world_size(group)
    if world == 1:
        return sums / counts.clamp_min(1)
    packed = torch.cat([sums.detach(), counts]).clone()
    dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
    global_sums, global_counts = packed.chunk(2)
    global_counts = global_counts.clamp_min(1)
    value = global_sums / global_counts
    differentiable = sums * (world / global_counts)
    return differentiable + (value - differentiable).detach()


def all_gather_rows(x: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Concatenate the rows of every process's ``x`` (N_r, ...) in rank order; N_r may differ per process.

    Used once, at prototype initialisation; it synchronises (the row counts are exchanged and read).
    """
    world = get_world_size(group)
    if world == 1:
        return x
    size = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    sizes_host = [int(s.item()) for s in sizes]  # host values needed to pad and trim; init-time only
    padded = x.new_zeros((max(sizes_host), *x.shape[1:]))
    padded[: x.shape[0]] = x
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded.contiguous(), group=group)
    return torch.cat([g[:n] for g, n in zip(gathered, sizes_host)])


def broadcast_(x: Tensor, src: int = 0, group: dist.ProcessGroup | None = None) -> Tensor:
    """Overwrite ``x`` in place with rank ``src``'s ``x`` when distributed; returns ``x``."""
    if is_distributed(group):
        dist.broadcast(x, src=src, group=group)
    return x
