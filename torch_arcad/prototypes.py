"""Sinkhorn-based prototype modelling (SPM), section 3.2: K prototypes on the hypersphere."""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ._validation import check_choice, check_dim, check_int, check_positive, check_rank
from .distributed import all_gather_rows, all_reduce_sum, broadcast_, get_rank, global_means, is_distributed
from .functional.prototypes import ema_prototypes, spherical_kmeans, spm_loss_from_similarities
from .functional.sinkhorn import sinkhorn_knopp

__all__ = ["MIN_PATCHES_PER_PROTOTYPE", "SinkhornPrototypes", "PrototypeOutput", "suggest_num_prototypes"]

#: The paper's ratio of normal patches a step to prototypes: K = 500 for 16 images x 784 patches (about 25 each).
PATCHES_PER_PROTOTYPE: int = 25
#: The paper's K, the largest :func:`suggest_num_prototypes` proposes.
MAX_SUGGESTED_PROTOTYPES: int = 500
#: ArcAD warns when a step holds fewer normal patches than this per prototype. The balanced assignment gives every
#: prototype 1 / K of the step's patches, so its EMA target then averages only a handful of them; with fewer patches
#: N than prototypes each patch must be split over about K / N prototypes and L_spm >~ log(K / N). A rule of
#: thumb well below the paper's 25, not a measured optimum.
MIN_PATCHES_PER_PROTOTYPE: int = 4


def suggest_num_prototypes(normal_patches_per_step: int) -> int:
    """A K for the normal patches one step holds: the paper's ratio (about 25 patches per prototype), rounded to
    a power of two, at most the paper's 500.

    ``16 * 784`` (Dinomaly's batch) gives 500, ``16 * 64`` (16 images on an 8 x 8 grid) 32, ``2 * 784`` 64.

    Args:
        normal_patches_per_step: patches of normal images in one step (over all processes under DDP), >= 1.

    Returns:
        K, between 1 and 500. For ``normal_patches_per_step >= MIN_PATCHES_PER_PROTOTYPE`` it leaves at least
        that many patches per prototype, so :class:`~torch_arcad.ArcAD` does not warn about it. Below about 35
        patches it is 1, where L_spm (eq. 4) is zero: a softmax over one prototype assigns nothing.
    """
    check_int("normal_patches_per_step", normal_patches_per_step, 1)
    exponent = round(math.log2(max(normal_patches_per_step / PATCHES_PER_PROTOTYPE, 1.0)))
    return int(min(MAX_SUGGESTED_PROTOTYPES, 2**exponent))

#: Bound on the Sinkhorn scores: cosine similarities of unit features and unit prototypes lie in [-1, 1], which lets
#: ``sinkhorn_knopp`` iterate in the exp domain for ``epsilon`` down to about 0.025 (below that it uses log domain).
COSINE_BOUND = 1.0


class PrototypeOutput(NamedTuple):
    """Result of :meth:`SinkhornPrototypes.forward`.

    Attributes:
        loss: scalar L_spm (eq. 4) computed with the prototypes from before this step's update; an exact zero
            (connected to the input) while the prototypes are not yet initialised.
        assignments: (N, K) float32 transport plan Q (zero rows for masked-out rows; uniform 1/K before
            initialisation).
        prototypes: (K, D) snapshot of the prototypes the loss used (pre-update), without gradient.
        similarities: (N, K) float32 cosine similarities ``z mu^T`` to that snapshot, differentiable with
            respect to ``z`` (the matmul eq. 4 uses; zeros before initialisation). Callers reuse it, e.g. for
            eq. 8's push term, instead of multiplying again.
    """

    loss: Tensor
    assignments: Tensor
    prototypes: Tensor
    similarities: Tensor


class SinkhornPrototypes(nn.Module):
    """K unit prototypes learnt by balanced Sinkhorn assignment and an EMA M-step (eq. 2-4).

    The prototypes are buffers, not parameters: they move only through the EMA toward ``normalize(Q^T z)`` (in
    training mode, after the loss has been formed) and are never touched by the optimiser. Before the first
    update they are initialised by spherical k-means (k-means++ seeding) on real normal features, either
    explicitly with :meth:`init_prototypes` or automatically from the first ``init_factor * K`` finite features
    that ``forward`` sees (several batches are buffered when one is not enough); meanwhile the loss is zero.

    Everything needed to resume is in ``state_dict()``: ``prototypes``, ``initialized`` and ``num_updates``.

    Under ``torch.distributed`` (``gather_distributed=True``, read at call time) the Sinkhorn column marginals,
    the EMA statistics, the loss normalisation and the k-means initialisation (run once on rank 0 and
    broadcast) are global, so every rank holds identical prototypes.

    Args:
        dim: feature dimension D.
        num_prototypes: K.
        temperature: tau of eq. 4.
        epsilon: Sinkhorn entropic regularisation. The scores are cosines, so Sinkhorn is given the bound
            :data:`COSINE_BOUND` and runs in the exp domain for ``epsilon`` >= about 0.025 (log domain below).
        sinkhorn_iterations: Sinkhorn scaling rounds.
        momentum: EMA momentum m (``mu <- normalize(m mu + (1 - m) target)``).
        init_factor: automatic initialisation waits for ``init_factor * K`` features.
        kmeans_iterations: Lloyd iterations of the initialisation.
        gather_distributed: make statistics global under ``torch.distributed``.
        seed: seed of the k-means++ draws, for reproducible initialisation.
        few_rows: the plan when the (global) number of taking-part rows is at most K: ``"sinkhorn"`` (eq. 3 as
            always) or ``"softmax"`` (``softmax(S / epsilon)`` per row, the released code's fallback). Both plans
            are computed and one is selected on the device, so the choice costs no synchronisation.
    """

    prototypes: Tensor
    initialized: Tensor
    num_updates: Tensor

    def __init__(
        self,
        dim: int,
        num_prototypes: int = 500,
        *,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        momentum: float = 0.99,
        init_factor: float = 4.0,
        kmeans_iterations: int = 10,
        gather_distributed: bool = True,
        seed: int = 0,
        few_rows: str = "sinkhorn",
    ) -> None:
        super().__init__()
        check_choice("few_rows", few_rows, ("sinkhorn", "softmax"))
        if dim < 1 or num_prototypes < 1:
            raise ValueError(f"dim and num_prototypes must be >= 1, got dim={dim}, num_prototypes={num_prototypes}")
        check_positive("temperature", temperature)
        check_positive("epsilon", epsilon)
        if sinkhorn_iterations < 0:
            raise ValueError(f"sinkhorn_iterations must be >= 0, got {sinkhorn_iterations}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if init_factor < 1:
            raise ValueError(f"init_factor must be >= 1, got {init_factor}")
        self.dim = dim
        self.num_prototypes = num_prototypes
        self.temperature = temperature
        self.epsilon = epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        self.momentum = momentum
        self.init_factor = init_factor
        self.kmeans_iterations = kmeans_iterations
        self.gather_distributed = gather_distributed
        self.seed = seed
        self.few_rows = few_rows
        #: process group of the collectives (None: the default group)
        self.process_group: dist.ProcessGroup | None = None
        self.register_buffer("prototypes", torch.zeros(num_prototypes, dim))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        # Host-side mirror of `initialized`, so the hot path never reads the device flag.
        self._ready = False
        self._pending: list[Tensor] = []
        self.register_load_state_dict_post_hook(_refresh_ready)

    @property
    def init_size(self) -> int:
        """Number of features the automatic initialisation waits for (``ceil(init_factor * K)``)."""
        return math.ceil(self.init_factor * self.num_prototypes)

    @property
    def is_ready(self) -> bool:
        """Whether the prototypes are initialised (host-side; no device synchronisation)."""
        return self._ready

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # .half() / .to(torch.bfloat16) / .double() move the prototypes but keep them float32, as the loss path
        # expects (the float32 values themselves, not a rounded copy).
        prototypes = self.prototypes
        super()._apply(fn, recurse)
        if self.prototypes.dtype != torch.float32:
            self.prototypes = prototypes.to(device=self.prototypes.device)
        return self

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_prototypes={self.num_prototypes}, temperature={self.temperature}, "
            f"epsilon={self.epsilon}, sinkhorn_iterations={self.sinkhorn_iterations}, momentum={self.momentum}"
        )

    def _group(self) -> dist.ProcessGroup | None:
        return self.process_group

    @property
    def gathers_globally(self) -> bool:
        """Whether statistics are taken over all processes now (``gather_distributed`` and world size > 1)."""
        return self.gather_distributed and is_distributed(self._group())

    @torch.no_grad()
    def init_prototypes(self, features: Tensor) -> None:
        """Initialise the prototypes by spherical k-means (k-means++ seeding) on normal features.

        Args:
            features: (N, D) finite features of normal patches, N >= K. Under ``torch.distributed`` (with
                ``gather_distributed``) the features of all ranks are gathered, k-means runs on rank 0 and the
                result is broadcast, so each rank may pass its own share.
        """
        check_rank("features", features, 2, "(N, D)")
        check_dim("features", features, 1, self.dim, "(N, D)")
        if not bool(torch.isfinite(features).all()):
            raise ValueError("features for prototype initialisation must be finite")
        distributed = self.gathers_globally
        if distributed:
            features = all_gather_rows(features.detach().float(), self._group())
        if features.shape[0] < self.num_prototypes:
            raise ValueError(
                f"initialisation needs at least K={self.num_prototypes} features of shape (N, {self.dim}), "
                f"got N={features.shape[0]}"
            )
        centres = self.prototypes.new_zeros(self.prototypes.shape)
        if not distributed or get_rank(self._group()) == 0:
            generator = torch.Generator(device=features.device).manual_seed(self.seed)
            centres = spherical_kmeans(
                features.detach(), self.num_prototypes, iterations=self.kmeans_iterations, generator=generator
            ).to(self.prototypes)
        if distributed:
            broadcast_(centres, 0, self._group())
        distinct = torch.unique(centres, dim=0).shape[0]
        if distinct < self.num_prototypes:
            warnings.warn(
                f"only {distinct} of {self.num_prototypes} prototypes are distinct: the initialisation features "
                "hold fewer distinct directions than K",
                stacklevel=2,
            )
        self.prototypes.copy_(centres)
        self.initialized.fill_(True)
        self._ready = True
        self._pending.clear()

    @torch.no_grad()
    def _buffer_for_init(self, z: Tensor, mask: Tensor | None) -> None:
        """Collect finite normal features until ``init_size`` are available, then initialise.

        Init-time only: it reads counts on the host (a device synchronisation), which the steady state never does.
        """
        rows = z.detach().float()
        if mask is not None:
            rows = rows[mask.to(torch.bool)]
        rows = rows[torch.isfinite(rows).all(dim=1)]
        self._pending.append(rows)
        local = sum(t.shape[0] for t in self._pending)
        count = torch.tensor(float(local), device=z.device)
        if self.gathers_globally:
            all_reduce_sum(count, self._group())
        if int(count.item()) >= self.init_size:
            self.init_prototypes(torch.cat(self._pending))

    def forward(self, z: Tensor, *, mask: Tensor | None = None) -> PrototypeOutput:
        """Assign features to prototypes, compute L_spm and (in training mode) update the prototypes.

        Args:
            z: (N, D) features; they are l2-normalised here.
            mask: optional (N,) boolean selecting the normal rows that take part (others get zero assignments
                and no loss).

        Returns:
            :class:`PrototypeOutput` (loss, assignments Q, pre-update prototypes).
        """
        check_rank("z", z, 2, "(N, D)")
        check_dim("z", z, 1, self.dim, "(N, D)")
        if mask is not None and (mask.dim() != 1 or mask.shape[0] != z.shape[0]):
            raise ValueError(f"mask must have shape (N,) = ({z.shape[0]},), got {tuple(mask.shape)}")
        z = F.normalize(z, dim=1)
        if not self._ready:
            if self.training:
                self._buffer_for_init(z, mask)
            if not self._ready:
                shape = (z.shape[0], self.num_prototypes)
                uniform = torch.full(shape, 1.0 / self.num_prototypes, device=z.device)
                zeros = torch.zeros(shape, device=z.device)
                return PrototypeOutput(z.sum() * 0.0, uniform, self.prototypes.clone(), zeros)
        return self._step(z, mask)

    def _step(self, z: Tensor, mask: Tensor | None) -> PrototypeOutput:
        mu = self.prototypes.clone()  # the loss keeps this snapshot; the EMA below writes the buffer in place
        distributed = self.gathers_globally
        with torch.autocast(device_type=z.device.type, enabled=False):
            similarities = z.float() @ mu.t()  # one (N, K) matmul serves Sinkhorn (detached) and eq. 4
        scores = similarities.detach()
        q = sinkhorn_knopp(
            scores,
            self.epsilon,
            self.sinkhorn_iterations,
            mask=mask,
            gather_distributed=distributed,
            group=self._group(),
            score_bound=COSINE_BOUND,
        )
        if self.few_rows == "softmax":
            q = self._few_rows_fallback(scores, q, mask, distributed)
        per_row = spm_loss_from_similarities(similarities, q, self.temperature, reduction="none")
        if mask is not None:
            weight = mask.to(torch.float32)
            per_row = per_row * weight
            count = weight.sum()
        else:
            count = torch.full((), float(z.shape[0]), device=z.device)
        if distributed:
            loss = global_means(per_row.sum().unsqueeze(0), count.unsqueeze(0), self._group())[0]
        else:
            loss = per_row.sum() / count.clamp_min(1)
        if self.training:
            self._ema_update(z.detach(), q, mu)
        return PrototypeOutput(loss, q, mu, similarities)

    @torch.no_grad()
    def _few_rows_fallback(self, scores: Tensor, q: Tensor, mask: Tensor | None, distributed: bool) -> Tensor:
        """``softmax(S / epsilon)`` in place of the Sinkhorn plan ``q`` when at most K rows take part.

        The row count is compared on the device and the plan selected with ``torch.where``: the data-dependent
        branch of the released code without a host synchronisation.
        """
        softmax = sinkhorn_knopp(scores, self.epsilon, 0, mask=mask)  # 0 rounds: the row softmax, masked rows 0
        if mask is not None:
            rows = mask.to(torch.float32).sum()
        else:
            rows = torch.full((), float(scores.shape[0]), device=scores.device)
        if distributed:
            rows = all_reduce_sum(rows.clone(), self._group())
        return torch.where(rows > self.num_prototypes, q, softmax)

    @torch.no_grad()
    def _ema_update(self, z: Tensor, q: Tensor, mu: Tensor) -> None:
        with torch.autocast(device_type=z.device.type, enabled=False):
            targets = q.t() @ z.float()  # (K, D) assignment-weighted sums
            finite = torch.isfinite(targets).all()
            if self.gathers_globally:
                # a non-finite rank poisons the sum, so every rank skips the update together
                all_reduce_sum(targets, self._group())
                finite = torch.isfinite(targets).all()
            updated = ema_prototypes(mu, targets, self.momentum)
            # Non-finite features leave the prototypes unchanged (no host sync: a select, not a branch).
            self.prototypes.copy_(torch.where(finite, updated, mu))
            self.num_updates.add_(finite.long())


def _refresh_ready(module: nn.Module, incompatible_keys: object) -> None:
    if isinstance(module, SinkhornPrototypes):
        module._ready = bool(module.initialized)
        module._pending.clear()
