"""Two pieces of the released training step that ``preset="official"`` reproduces: per-group BatchNorm
statistics in the discriminator, and the discriminator's initialisation.

The released code calls its discriminator three times in training mode (normal patches, pseudo-anomalies, every
patch of the defective images), so BatchNorm normalises each group with that group's statistics and updates its
running statistics once per call. Here all rows pass in one call of static shape; each row carries a group index
and a 0/1 weight, and the statistics are weighted per-group means. No step reads a count on the host.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .distributed import differentiable_all_reduce_sum, is_distributed

__all__ = ["grouped_batch_norm", "discriminator_logits_by_group", "trunc_normal_init_"]

#: The released code's initialisation of every linear layer: a normal of this std, truncated to +-_INIT_BOUND.
_INIT_STD = 0.01
_INIT_BOUND = 0.03


def _global_sum(x: Tensor, norm: _BatchNorm) -> Tensor:
    """Differentiable sum over the processes of a SyncBatchNorm's group (identity otherwise)."""
    if isinstance(norm, nn.SyncBatchNorm):
        group = norm.process_group if norm.process_group is not None else dist.group.WORLD
        if is_distributed(group):
            return differentiable_all_reduce_sum(x, group)
    return x


def grouped_batch_norm(x: Tensor, norm: _BatchNorm, group: Tensor, weight: Tensor, num_groups: int) -> Tensor:
    """A training-mode BatchNorm over (N, C) rows, each group of rows normalised as a batch of its own.

    Row ``i`` is normalised with the statistics of group ``group[i]``, to which it contributes when
    ``weight[i]`` is 1 (a row of weight 0 takes its group's statistics without shaping them). The result on the
    weighted rows, and its gradient, equal ``norm`` called in training mode on each group separately. The running
    statistics (when tracked) are updated once per non-empty group, in group order, with the unbiased variance,
    exactly as the separate calls would update them; ``num_batches_tracked`` counts those calls. Under a
    :class:`~torch.nn.SyncBatchNorm` in a process group the group statistics are global, as that layer's are.

    Args:
        x: (N, C) pre-normalisation activations.
        norm: the BatchNorm layer whose affine parameters, ``eps``, ``momentum`` and buffers are used.
        group: (N,) integer group of each row, in ``[0, num_groups)``.
        weight: (N,) 0/1 weights: which rows make up their group's statistics.
        num_groups: G.

    Returns:
        (N, C) normalised activations, dtype of ``x`` (the statistics are taken in float32, also under autocast).
        A group without rows leaves the running statistics untouched; its rows (all of weight 0) are normalised
        with a zero mean and unit variance, so they stay finite.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        out = _grouped_batch_norm_fp32(x.float(), norm, group, weight, num_groups)
    return out.to(x.dtype)


def _grouped_batch_norm_fp32(x: Tensor, norm: _BatchNorm, group: Tensor, weight: Tensor, num_groups: int) -> Tensor:
    membership = F.one_hot(group, num_groups).to(x.dtype) * weight.to(x.dtype).unsqueeze(1)  # (N, G)
    counts = _global_sum(membership.sum(0), norm)  # (G,)
    present = counts > 0
    denominator = counts.clamp_min(1).unsqueeze(1)
    means = _global_sum(membership.t() @ x, norm) / denominator  # (G, C)
    assignment = F.one_hot(group, num_groups).to(x.dtype)
    centred = x - assignment @ means
    variances = _global_sum(membership.t() @ centred.square(), norm) / denominator  # biased, as BatchNorm divides
    variances = torch.where(present.unsqueeze(1), variances, torch.ones_like(variances))
    out = centred * torch.rsqrt(assignment @ variances + norm.eps)
    if norm.weight is not None:
        out = out * norm.weight + norm.bias
    if norm.training and norm.track_running_stats and norm.running_mean is not None:
        _update_running_stats(norm, means.detach(), variances.detach(), counts.detach(), present)
    return out


@torch.no_grad()
def _update_running_stats(norm: _BatchNorm, means: Tensor, variances: Tensor, counts: Tensor, present: Tensor) -> None:
    """One momentum update per non-empty group, in order, as successive training-mode calls make them."""
    # BatchNorm's running variance is unbiased: n / (n - 1) times the batch variance. (A one-row group, which
    # BatchNorm refuses in training mode, keeps the biased value here rather than becoming infinite.)
    unbiased = variances * (counts / (counts - 1).clamp_min(1)).unsqueeze(1)
    for g in range(means.shape[0]):  # G = 3 fixed groups, not a loop over rows
        tracked = norm.num_batches_tracked + present[g].long()
        if norm.momentum is None:  # cumulative moving average
            factor = 1.0 / tracked.clamp_min(1).to(means.dtype)
        else:
            factor = torch.full((), norm.momentum, dtype=means.dtype, device=means.device)
        factor = torch.where(present[g], factor, torch.zeros_like(factor))
        norm.running_mean.lerp_(means[g].to(norm.running_mean.dtype), factor.to(norm.running_mean.dtype))
        norm.running_var.lerp_(unbiased[g].to(norm.running_var.dtype), factor.to(norm.running_var.dtype))
        norm.num_batches_tracked.copy_(tracked)


def discriminator_logits_by_group(
    discriminator: nn.Module, x: Tensor, group: Tensor, weight: Tensor, num_groups: int
) -> Tensor:
    """The discriminator's (N,) logits with every BatchNorm layer normalising per group (training mode).

    In evaluation mode (a BatchNorm with running statistics then uses them), or without a BatchNorm layer, this is
    the ordinary call: the groups then do not matter.

    Args:
        discriminator: a :class:`~torch_arcad.FocalDiscriminator` (its ``net`` is run layer by layer).
        x: (N, D) features.
        group, weight, num_groups: as in :func:`grouped_batch_norm`.
    """
    layers = list(discriminator.net)
    if not any(_uses_batch_statistics(layer) for layer in layers):
        return discriminator(x)
    out = x.to(layers[0].weight.dtype)  # the input follows the weights' dtype, as in FocalDiscriminator.forward
    for layer in layers:
        if _uses_batch_statistics(layer):
            out = grouped_batch_norm(out, layer, group, weight, num_groups)
        else:
            out = layer(out)
    return out.squeeze(1)


def _uses_batch_statistics(layer: nn.Module) -> bool:
    """Whether a layer is a BatchNorm that normalises with batch statistics now (PyTorch's own rule: in training
    mode, or when it keeps no running statistics)."""
    return isinstance(layer, _BatchNorm) and (layer.training or layer.running_mean is None)


@torch.no_grad()
def trunc_normal_init_(module: nn.Module) -> nn.Module:
    """The released code's initialisation: every ``nn.Linear`` weight from N(0, 0.01^2) truncated to +-0.03, every
    linear bias 0 (other layers keep theirs). Returns ``module``."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.trunc_normal_(layer.weight, std=_INIT_STD, a=-_INIT_BOUND, b=_INIT_BOUND)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module
