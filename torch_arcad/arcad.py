"""The ArcAD composite (eq. 10): SPM + DGC + focal discriminator behind one call."""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ._released import discriminator_logits_by_group, trunc_normal_init_
from ._validation import DeferredWarnings, check_dim, check_floating, check_int, check_number
from .calibration import DefectGuidedLoss
from .discriminator import FocalDiscriminator
from .distributed import all_reduce_sum, global_means
from .functional.calibration import defect_guided_loss
from .functional.focal import binary_focal_loss_with_logits
from .layout import features_to_patches, image_labels, mask_fractions
from .presets import ArcADPreset, get_preset
from .prototypes import MIN_PATCHES_PER_PROTOTYPE, SinkhornPrototypes, suggest_num_prototypes
from .synthesis import HypersphereAnomalySynthesizer

__all__ = ["ArcAD", "ArcADOutput", "ArcADScores", "noise_scale", "pseudo_anomaly_distance"]


def noise_scale(sigma: float, dim: int, reference_dim: int | None) -> float:
    """Eq. 5's noise standard deviation for a D-dimensional bottleneck.

    A noise vector ``n ~ N(0, sigma^2 I_D)`` has squared norm about ``sigma^2 D``, so a pseudo-anomaly
    ``normalize(z + n)`` sits at cosine about ``1 / sqrt(1 + sigma^2 D)`` from its unit anchor: 0.92 at the
    paper's D = 768 and sigma = 0.015, but 0.97 at D = 256 and 0.98 at D = 176. ``sigma * sqrt(D_ref / D)``
    gives every D the angle of ``D_ref``.

    Args:
        sigma: the preset's sigma.
        dim: the bottleneck's D.
        reference_dim: ``D_ref``, or ``None`` to keep ``sigma``.

    Returns:
        The standard deviation to use.
    """
    if reference_dim is None:
        return float(sigma)
    return float(sigma) * math.sqrt(reference_dim / dim)


def pseudo_anomaly_distance(sigma: float, dim: int) -> float:
    """Typical distance ``1 - z . normalize(z + n)`` of an eq. 5 pseudo-anomaly from its unit anchor.

    With ``n ~ N(0, sigma^2 I_D)``, ``|n|^2`` is about ``sigma^2 D`` and almost orthogonal to ``z``, so the cosine
    is about ``1 / sqrt(1 + sigma^2 D)``: 0.028 at D = 256 and sigma = 0.015, 0.079 at the paper's D = 768. It is
    the unit in which a discriminator with ``discriminator_distance=True`` reads distances.

    Args:
        sigma: the noise standard deviation actually used (after :func:`noise_scale`), > 0.
        dim: the bottleneck's D.

    Returns:
        The distance, in (0, 1).
    """
    if not sigma > 0:
        raise ValueError(
            f"the pseudo-anomalies' distance from their anchors (the unit of discriminator_distance=True) needs "
            f"sigma > 0, got {sigma!r}"
        )
    return 1.0 - 1.0 / math.sqrt(1.0 + float(sigma) ** 2 * dim)

#: Warnings issued while checking the input point at the caller of ``arcad(...)``: the frames in between are the
#: checking method, ``forward`` and nn.Module's two call wrappers.
_USER_FRAME: int = 5
#: How a real anomaly patch is weighted in L_dgc and L_cls (see :class:`ArcAD`'s ``mask_weighting``).
MASK_WEIGHTINGS: tuple[str, ...] = ("binary", "fraction", "fraction_mean")


class ArcADOutput(NamedTuple):
    """Result of :meth:`ArcAD.forward`.

    Attributes:
        loss: ``lambda_spm * spm + lambda_dgc * dgc + lambda_cls * cls`` (eq. 10 without L_recon).
        spm: L_spm, eq. 4.
        dgc: L_dgc, eq. 8 (0 when the batch has no anomalous patch).
        cls: L_cls, eq. 9.
        stats: detached diagnostics, the same keys at every step: ``initialized``; ``num_normal`` and
            ``num_anomalous`` patches (finite ones only); ``num_nonfinite`` patches (a NaN or inf anywhere in
            the row), which took part in no term; ``prototype_usage`` (K,) hard assignments of the normal
            patches (zeros before initialisation); ``discriminator_accuracy`` (3,) on normal, synthetic and
            real anomalous patches (NaN before initialisation). Reading them synchronises; the loss path does
            not.
    """

    loss: Tensor
    spm: Tensor
    dgc: Tensor
    cls: Tensor
    stats: dict[str, Tensor]


class ArcADScores(NamedTuple):
    """Per-patch anomaly maps on the feature grid, from :meth:`ArcAD.score`.

    Attributes:
        prototype: (B, h, w) ``1 - max_k z . mu_k``, in [0, 2].
        discriminator: (B, h, w) discriminator probability ``sigmoid(f_disc(z))``, in [0, 1].
    """

    prototype: Tensor
    discriminator: Tensor


class ArcAD(nn.Module):
    """ArcAD's latent calibration for a reconstruction-based detector, in one module.

    Add ``arcad(z, masks=masks, labels=labels).loss`` to the reconstruction loss (computed on the normal images
    only) and give ``arcad.parameters()`` (the discriminator) to the optimiser. ``z`` is the bottleneck output
    for the whole batch, normal and defective images together.

    Normal patches are all patches of label-0 images; real anomalies (eq. 7) are the patches of label-1 images
    whose defect fraction exceeds ``mask_threshold`` (each weighted 1, or by its defect fraction: see
    ``mask_weighting``). Every term is computed over all patches with 0/1 weights
    rather than by boolean selection, so shapes are static and no step waits on the device.

    Bad input does not poison training: a patch with a NaN or inf feature gets weight 0 in every term (the loss,
    the discriminator's gradient and the prototypes stay finite) and is counted in ``stats["num_nonfinite"]``; a
    label-0 image whose mask marks defect pixels is treated as normal (the labels decide). Both are reported by a
    one-time warning that never waits for the device (on an accelerator it appears a step or so later). When the
    normal patches of a step are too few for K (fewer than ``MIN_PATCHES_PER_PROTOTYPE`` per prototype), a
    one-time warning suggests a K (:func:`~torch_arcad.prototypes.suggest_num_prototypes`).

    ``arcad.half()`` and ``arcad.to(torch.bfloat16)`` convert the discriminator only: the prototypes stay float32
    buffers and every loss is computed in float32.

    Args:
        dim: feature dimension D of the bottleneck output.
        num_prototypes: K (paper 500 for 16 x 784 patches a step; the released code uses 800 for MVTec AD and
            MANTA). Choose it for the normal patches a step holds: :func:`~torch_arcad.suggest_num_prototypes`.
        preset: ``"paper"`` or ``"official"`` (the released code's behaviour at each point where it departs from
            the paper; see :mod:`torch_arcad.presets`), or an :class:`~torch_arcad.presets.ArcADPreset`, e.g.
            ``get_preset("official", mask_level=0.5)`` for settings without a keyword here.
        lambda_spm, lambda_dgc, lambda_cls: lambda_1..3 of eq. 10.
        prefix_tokens: leading non-patch tokens of a (B, N, D) input (Dinomaly: 5 = CLS + 4 registers).
        mask_threshold: defect fraction above which a patch is anomalous (0.0: any defect pixel).
        mask_weighting: ``"binary"`` (default, the paper and the released code): every real anomaly has weight 1
            in L_dgc (eq. 8) and in L_cls's real group (eq. 9). ``"fraction"``: its term is multiplied by its
            defect fraction (the share of its pixels that are defect pixels) and the means stay over the anomalous
            patches, so a patch a thin defect only grazes is pushed with that share of eq. 8's force, and a defect
            that fills its patches gets the paper's loss. ``"fraction_mean"``: the same weights in weighted means
            (divided by the sum of the weights), so only the anomalies' relative weights change. The
            discriminator's targets stay 0 / 1. Options of this library, not of the paper: where a defect is much
            smaller than a patch, most of an anomalous patch is normal texture.
        hidden_dim: discriminator width (default D / 1.5).
        temperature, epsilon, sinkhorn_iterations, momentum, sigma, num_candidates, clamp_push, cls_anomalies,
        cls_weighting, discriminator_norm, alpha, gamma: override single preset settings (``None`` keeps the
            preset's value); see :class:`~torch_arcad.presets.ArcADPreset`.
        detach_synthetic: pseudo-anomalies without gradient to the bottleneck (default False, as released).
        detach_cls: L_cls (eq. 9) trains the discriminator only: the patches and the pseudo-anomalies enter it
            detached, so no gradient of L_cls reaches the bottleneck (default False: as in the paper and the
            released code, L_cls also shapes the bottleneck). An option of this library, not of the paper.
        sigma_reference_dim: ``None`` (default, the paper and the released code): eq. 5's noise has standard
            deviation ``sigma`` whatever D. An int ``D_ref``: ``sigma * sqrt(D_ref / D)``, which keeps the
            pseudo-anomalies at the angle from their anchors they have at ``D_ref`` (see :func:`noise_scale`; 768
            is the paper's ViT-B bottleneck). An option of this library, not of the paper.
        sigma_max: ``None`` (default, the paper: every pseudo-anomaly at eq. 5's one noise scale) or the largest
            noise scale: each anchor draws its scale log-uniformly in ``[sigma, sigma_max]`` (both scaled by
            ``sigma_reference_dim`` if given), so the pseudo-anomalies fill the space from eq. 5's thin shell
            outwards, up to about ``arccos(1 / sqrt(1 + sigma_max^2 D))`` from their anchors, and the
            discriminator is trained on all of it. An option of this library, not of the paper.
        push_margin: ``None`` (default, eq. 8) or a cosine ``m`` in ``[-1, 1)``: the push of eq. 8 becomes
            ``relu(max_k a . mu_k - m)``, so a real anomaly is pushed only until its cosine to the nearest prototype
            is down to ``m`` (``0`` is the released code's clamp; it cannot be combined with ``clamp_push``). An
            option of this library, not of the paper.
        discriminator_distance: ``False`` (default, the paper: the discriminator reads ``z`` alone) or ``True``:
            its logit also gets a learned non-negative multiple of the patch's distance to the nearest prototype,
            ``f(z) + exp(rho) * (1 - max_k z . mu_k) / s``, with ``s`` the typical distance of a pseudo-anomaly
            from its anchor (:func:`pseudo_anomaly_distance` at eq. 5's noise scale; ``rho`` starts at 0). In
            training the pseudo-anomalies and the real anomalies lie farther from the prototypes than the normal
            patches, so the term is learned; at inference it keeps a patch far from every prototype from scoring
            lower than the normal patches for that reason alone, which is how an MLP on ``z`` can rank unseen
            defects below normal patches when they fall outside the region it was trained on (docs/results.md,
            question 2). Needs ``sigma > 0``. An option of this library, not of the paper.
        init_factor: the prototypes initialise from the first ``init_factor * K`` normal patches.
        seed: seed of the prototype initialisation.
    """

    def __init__(
        self,
        dim: int,
        num_prototypes: int = 500,
        *,
        preset: str = "paper",
        lambda_spm: float = 0.1,
        lambda_dgc: float = 0.1,
        lambda_cls: float = 0.1,
        prefix_tokens: int = 0,
        mask_threshold: float = 0.0,
        mask_weighting: str = "binary",
        hidden_dim: int | None = None,
        temperature: float | None = None,
        epsilon: float | None = None,
        sinkhorn_iterations: int | None = None,
        momentum: float | None = None,
        sigma: float | None = None,
        num_candidates: int | None = None,
        clamp_push: bool | None = None,
        cls_anomalies: str | None = None,
        cls_weighting: str | None = None,
        discriminator_norm: str | None = None,
        alpha: float | None = None,
        gamma: float | None = None,
        detach_synthetic: bool = False,
        detach_cls: bool = False,
        sigma_reference_dim: int | None = None,
        sigma_max: float | None = None,
        push_margin: float | None = None,
        discriminator_distance: bool = False,
        init_factor: float = 4.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_arguments(
            dim=dim, num_prototypes=num_prototypes, hidden_dim=hidden_dim, prefix_tokens=prefix_tokens,
            lambda_spm=lambda_spm, lambda_dgc=lambda_dgc, lambda_cls=lambda_cls, mask_threshold=mask_threshold,
            init_factor=init_factor,
        )
        config = get_preset(
            preset,
            temperature=temperature,
            epsilon=epsilon,
            sinkhorn_iterations=sinkhorn_iterations,
            momentum=momentum,
            sigma=sigma,
            num_candidates=num_candidates,
            clamp_push=clamp_push,
            cls_anomalies=cls_anomalies,
            cls_weighting=cls_weighting,
            discriminator_norm=discriminator_norm,
            alpha=alpha,
            gamma=gamma,
        )
        if config.cls_anomalies not in ("masked", "image"):
            raise ValueError(f"cls_anomalies must be one of ('masked', 'image'), got {config.cls_anomalies!r}")
        if prefix_tokens < 0:
            raise ValueError(f"prefix_tokens must be >= 0, got {prefix_tokens}")
        if not 0.0 <= mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in [0, 1), got {mask_threshold}")
        if mask_weighting not in MASK_WEIGHTINGS:
            raise ValueError(f"mask_weighting must be one of {MASK_WEIGHTINGS}, got {mask_weighting!r}")
        self.dim = dim
        self.preset = preset
        self.config: ArcADPreset = config
        self.lambda_spm = lambda_spm
        self.lambda_dgc = lambda_dgc
        self.lambda_cls = lambda_cls
        self.prefix_tokens = prefix_tokens
        self.mask_threshold = mask_threshold
        self.mask_weighting = mask_weighting
        self.prototypes = SinkhornPrototypes(
            dim,
            num_prototypes,
            temperature=config.temperature,
            epsilon=config.epsilon,
            sinkhorn_iterations=config.sinkhorn_iterations,
            momentum=config.momentum,
            init_factor=init_factor,
            seed=seed,
            few_rows=config.few_patch_assignment,
        )
        if sigma_reference_dim is not None and (
            isinstance(sigma_reference_dim, bool) or not isinstance(sigma_reference_dim, int) or sigma_reference_dim < 1
        ):
            raise ValueError(f"sigma_reference_dim must be None or an int >= 1, got {sigma_reference_dim!r}")
        self.sigma_reference_dim = sigma_reference_dim
        if not isinstance(detach_cls, bool):
            raise TypeError(f"detach_cls must be a bool, got {detach_cls!r}")
        self.detach_cls = detach_cls
        if sigma_max is not None and (isinstance(sigma_max, bool) or not isinstance(sigma_max, (int, float))):
            raise ValueError(f"sigma_max must be None or a float, got {sigma_max!r}")
        self.synthesizer = HypersphereAnomalySynthesizer(
            noise_scale(config.sigma, dim, sigma_reference_dim),
            config.num_candidates,
            sigma_max=None if sigma_max is None else noise_scale(sigma_max, dim, sigma_reference_dim),
            detach=detach_synthetic,
        )
        if push_margin is not None and config.clamp_push:
            raise ValueError(
                "push_margin replaces the preset's clamp_push (a margin of 0); pass clamp_push=False with it"
            )
        self.calibration = DefectGuidedLoss(clamp_push=config.clamp_push, push_margin=push_margin)
        if not isinstance(discriminator_distance, bool):
            raise TypeError(f"discriminator_distance must be a bool, got {discriminator_distance!r}")
        self.discriminator = FocalDiscriminator(
            dim,
            hidden_dim,
            alpha=config.alpha,
            gamma=config.gamma,
            norm=config.discriminator_norm,
            weighting=config.cls_weighting,
            distance_scale=pseudo_anomaly_distance(self.synthesizer.sigma, dim) if discriminator_distance else None,
        )
        if config.discriminator_init == "trunc_normal":
            trunc_normal_init_(self.discriminator)
        self._input_warnings = DeferredWarnings((_nonfinite_message, _contradiction_message), stacklevel=_USER_FRAME)
        self._warned_num_prototypes = False

    def extra_repr(self) -> str:
        return (
            f"preset={self.preset!r}, lambda_spm={self.lambda_spm}, lambda_dgc={self.lambda_dgc}, "
            f"lambda_cls={self.lambda_cls}, prefix_tokens={self.prefix_tokens}, mask_threshold={self.mask_threshold}, "
            f"mask_weighting={self.mask_weighting!r}"
        )

    @property
    def initialized(self) -> bool:
        """Whether the prototypes are initialised (until then every term is zero)."""
        return self.prototypes.is_ready

    def _patches(self, features: Tensor) -> tuple[Tensor, tuple[int, int]]:
        patches, grid = features_to_patches(features, self.prefix_tokens)
        check_floating("features", patches)
        check_dim("features", patches, 2, self.dim, f"(B, N, D={self.dim}) or (B, D={self.dim}, H, W)")
        return patches, grid

    def forward(
        self,
        features: Tensor,
        *,
        masks: Tensor | None = None,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> ArcADOutput:
        """The three ArcAD terms on one batch.

        Args:
            features: bottleneck output for the whole batch: (B, N, D) tokens (the first ``prefix_tokens`` are
                dropped, the rest form a square grid) or (B, D, H, W) maps.
            masks: ground-truth masks at image resolution, (B, H, W) or (B, 1, H, W); None when the batch has no
                defective image. A floating mask pixel above the preset's ``mask_level`` is a defect pixel (0.5 for
                ``"paper"``; 0.0 for ``"official"``, so the soft fringe of a resized mask counts).
            labels: (B,) image labels, non-zero for defective images; derived from ``masks`` when absent.
            generator: optional random generator for the synthesis noise.

        Returns:
            :class:`ArcADOutput`.
        """
        patches, grid = self._patches(features)
        batch, num_patches, _ = patches.shape
        fractions = (
            mask_fractions(masks, batch, grid, level=self.config.mask_level).to(patches.device)
            if masks is not None
            else None
        )
        anomalous = fractions > self.mask_threshold if fractions is not None else None
        defective = image_labels(labels, anomalous, batch, patches.device)
        if anomalous is None:
            anomalous = torch.zeros(batch, num_patches, dtype=torch.bool, device=patches.device)

        # A patch with a NaN / inf feature takes part in no term: zeroed here (a select, so no NaN reaches any
        # gradient) and given weight 0 through `finite` below.
        finite = rearrange(torch.isfinite(patches).all(dim=-1), "b n -> (b n)")
        patches = torch.where(rearrange(finite, "(b n) -> b n 1", b=batch), patches, patches.new_zeros(()))
        z = rearrange(F.normalize(patches.float(), dim=-1), "b n d -> (b n) d")
        normal = rearrange(~defective, "b -> b 1").expand(batch, num_patches).reshape(-1) & finite
        real = (anomalous & rearrange(defective, "b -> b 1")).reshape(-1) & finite
        if self.config.cls_anomalies == "image":
            cls_real = rearrange(defective, "b -> b 1").expand(batch, num_patches).reshape(-1) & finite
        else:
            cls_real = real
        self._report_input(finite, anomalous, defective, labels is not None and masks is not None)

        spm = self.prototypes(z, mask=normal)
        if not self.prototypes.is_ready:
            zero = z.sum() * 0.0
            return ArcADOutput(zero, zero, zero, zero, self._stats_before_init(normal, real, finite))
        mu = spm.prototypes
        w_normal, w_real, w_cls_real = normal.float(), real.float(), cls_real.float()
        # eq. 9's 0/1 targets, and the counts the real anomalies' means divide by (the weights may differ)
        target_real, n_real, n_cls_real = w_cls_real, w_real, w_cls_real
        if self.mask_weighting != "binary" and fractions is not None:
            w_real = w_real * rearrange(fractions, "b n -> (b n)")
            if self.config.cls_anomalies == "masked":
                w_cls_real = w_real
            if self.mask_weighting == "fraction_mean":
                n_real, n_cls_real = w_real, w_cls_real
        # Eq. 5-8 see the pre-update prototypes (the E-step), or the EMA-updated ones (the released code).
        mu_cal, push_similarities = mu, spm.similarities
        if self.config.ema_before_synthesis:
            mu_cal, push_similarities = self.prototypes.prototypes.detach().clone(), None

        # Eq. 5-6: one pseudo-anomaly per patch; only those of normal patches count (weights).
        synthetic = self.synthesizer(z, mu_cal, generator=generator)

        # Eq. 8: the mean of the (detached) pseudo-anomalies is a global statistic under DDP.
        syn_stats = torch.cat([(w_normal.unsqueeze(1) * synthetic.detach()).sum(0), w_normal.sum().unsqueeze(0)])
        if self.config.pool_without_normals == "prototypes":
            syn_stats = torch.cat([syn_stats, self._prototype_pool_stats(mu_cal, generator)])
        if self.prototypes.gathers_globally:
            syn_stats = all_reduce_sum(syn_stats.clone(), self.prototypes.process_group)
        syn_mean = syn_stats[: self.dim] / syn_stats[self.dim].clamp_min(1)
        if self.config.pool_without_normals == "prototypes":
            # no normal patch anywhere: the pseudo-anomalies come from the prototypes (selected on the device)
            pool_mean = syn_stats[self.dim + 1 : -1] / syn_stats[-1].clamp_min(1)
            syn_mean = torch.where(syn_stats[self.dim] > 0, syn_mean, pool_mean)
        dgc_sum = defect_guided_loss(
            z,
            mu_cal,
            syn_mean.unsqueeze(0),
            anomaly_weight=w_real,
            clamp_push=self.calibration.clamp_push,
            push_margin=self.calibration.push_margin,
            similarities=push_similarities,
            reduction="sum",
        )

        # Eq. 9: the patches pass once (target 1 where anomalous), the pseudo-anomalies once (target 1).
        cls_input = torch.cat([z, synthetic])
        if self.detach_cls:  # the discriminator learns; the bottleneck gets no gradient from L_cls
            cls_input = cls_input.detach()
        distance = None
        if self.discriminator.reads_distance:
            distance = self._cls_distance(z, synthetic, mu_cal, push_similarities)
        logits = self._discriminator_logits(cls_input, normal, w_normal, w_cls_real, distance)
        logits_z, logits_syn = logits.split(z.shape[0])
        focal = binary_focal_loss_with_logits(
            logits, torch.cat([target_real, torch.ones_like(w_normal)]), self.config.alpha, self.config.gamma,
            reduction="none",
        )
        focal_z, focal_syn = focal.split(z.shape[0])
        group_sums = torch.stack([(focal_z * w_normal).sum(), (focal_syn * w_normal).sum(), (focal_z * w_cls_real).sum()])
        group_counts = torch.stack([w_normal.sum(), w_normal.sum(), n_cls_real.sum()])
        cls_sums, cls_counts, coefficients = self.discriminator.combine_groups(group_sums, group_counts)

        sums = torch.cat([dgc_sum.unsqueeze(0), cls_sums])
        counts = torch.cat([n_real.sum().unsqueeze(0), cls_counts])
        if self.prototypes.gathers_globally:
            means = global_means(sums, counts, self.prototypes.process_group)
        else:
            means = sums / counts.clamp_min(1)
        dgc = means[0]
        cls = sum(c * m for c, m in zip(coefficients, means[1:]))
        loss = self.lambda_spm * spm.loss + self.lambda_dgc * dgc + self.lambda_cls * cls

        with torch.no_grad():
            nearest = spm.similarities.argmax(dim=1)
            usage = torch.zeros(mu.shape[0], device=z.device).index_add_(0, nearest, w_normal)
            correct_z = ((logits_z > 0).float() == target_real).float()
            correct_syn = (logits_syn > 0).float()
            accuracy = torch.stack(
                [
                    (correct_z * w_normal).sum() / w_normal.sum().clamp_min(1),
                    (correct_syn * w_normal).sum() / w_normal.sum().clamp_min(1),
                    (correct_z * target_real).sum() / target_real.sum().clamp_min(1),
                ]
            )
            stats = {
                "initialized": torch.ones((), dtype=torch.bool, device=z.device),
                "num_normal": w_normal.sum(),
                "num_anomalous": real.sum().float(),
                "num_nonfinite": (~finite).sum().float(),
                "prototype_usage": usage,
                "discriminator_accuracy": accuracy,
            }
        return ArcADOutput(loss, spm.loss, dgc, cls, stats)

    def _prototype_pool_stats(self, mu: Tensor, generator: torch.Generator | None) -> Tensor:
        """(D + 1,) sum and count of pseudo-anomalies synthesised from the K prototypes themselves (eq. 5-6 with
        the prototypes as anchors): the released code's eq. 8 pool for a batch without normal images. Always
        computed (K anchors, a fraction K / N of the main synthesis) so the selection needs no host branch."""
        with torch.no_grad():
            pool = self.synthesizer(mu, mu, generator=generator)
        return torch.cat([pool.sum(0), pool.new_full((1,), float(pool.shape[0]))])

    def _cls_distance(self, z: Tensor, synthetic: Tensor, mu: Tensor, similarities: Tensor | None) -> Tensor:
        """(2N,) distances ``1 - max_k x . mu_k`` of ``[patches; pseudo-anomalies]``, float32: the patches' reuse the
        step's (N, K) similarities to ``mu`` when there are some (eq. 4's matmul), so only the pseudo-anomalies'
        are computed. Detached with ``detach_cls``, like the rows the discriminator reads."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            if similarities is None:
                similarities = z.float() @ mu.float().t()
            distance = 1 - torch.cat(
                [similarities.amax(dim=-1), (synthetic.float() @ mu.float().t()).amax(dim=-1)]
            )
        return distance.detach() if self.detach_cls else distance

    def _discriminator_logits(
        self, x: Tensor, normal: Tensor, w_normal: Tensor, w_cls_real: Tensor, distance: Tensor | None
    ) -> Tensor:
        """Discriminator logits of ``[patches; pseudo-anomalies]`` (2N, D), with their (2N,) distances to the
        nearest prototype when the discriminator reads them.

        ``"joint"``: one batch. ``"grouped"``: BatchNorm statistics per group, as the released code's three calls:
        the normal patches, their pseudo-anomalies, the real positives (every patch of a defective image with
        ``cls_anomalies="image"``). Pseudo-anomalies of defective-image patches take the second group's statistics
        with weight 0 (their loss weight is 0 too).
        """
        if self.config.discriminator_batches == "joint":
            return self.discriminator(x, distance)
        patch_group = torch.where(normal, 0, 2)
        group = torch.cat([patch_group, torch.ones_like(patch_group)])
        weight = torch.cat([torch.where(normal, w_normal, w_cls_real), w_normal])
        return discriminator_logits_by_group(self.discriminator, x, group, weight, num_groups=3, distance=distance)

    def _stats_before_init(self, normal: Tensor, real: Tensor, finite: Tensor) -> dict[str, Tensor]:
        """:attr:`ArcADOutput.stats` while the prototypes are not initialised: the same keys, nothing measured."""
        device = normal.device
        return {
            "initialized": torch.zeros((), dtype=torch.bool, device=device),
            "num_normal": normal.sum().float(),
            "num_anomalous": real.sum().float(),
            "num_nonfinite": (~finite).sum().float(),
            "prototype_usage": torch.zeros(self.prototypes.num_prototypes, device=device),
            "discriminator_accuracy": torch.full((3,), float("nan"), device=device),
        }

    def _report_input(self, finite: Tensor, anomalous: Tensor, defective: Tensor, labelled_masks: bool) -> None:
        """The one-time warnings about the input: non-finite patches, normal-labelled images with defect pixels
        (deferred: never waits for the device), and a K too large for the step's normal patches."""
        if torch.compiler.is_compiling():
            return  # Python side effects would break the graph; the counts remain in `stats`
        if not all(self._input_warnings.issued):
            contradictions = (anomalous.any(dim=1) & ~defective).sum() if labelled_masks else finite.new_zeros(())
            self._input_warnings.update(torch.stack([(~finite).sum(), contradictions.long()]))
        if self._warned_num_prototypes:
            return
        k = self.prototypes.num_prototypes
        rows = finite.shape[0]  # static: an upper bound of the normal patches, read without a sync
        if self.training and not self.prototypes.is_ready:
            # Initialisation steps only: the prototypes' buffering reads counts on the host anyway.
            rows = int((~defective).sum()) * (rows // defective.shape[0])
        suggested = suggest_num_prototypes(max(rows, 1))
        if rows < MIN_PATCHES_PER_PROTOTYPE * k and suggested < k:
            self._warned_num_prototypes = True
            single = (
                " With num_prototypes=1 L_spm (eq. 4) is exactly zero, a softmax over one prototype, so the prototype"
                " then serves L_dgc and the scores only; more normal patches per step (a larger batch or a finer grid"
                " of features) keep the prototype term."
                if suggested == 1
                else ""
            )
            warnings.warn(
                f"num_prototypes={k} is large for the {rows} normal patches this step holds: the balanced Sinkhorn "
                f"assignment gives each prototype 1/K of them, at most {rows / k:.1f} patches (the paper has about "
                f"25; below {MIN_PATCHES_PER_PROTOTYPE} each prototype follows a handful of patches, and with fewer "
                f"patches than prototypes L_spm stays above about log(K / patches)). Try "
                f"num_prototypes={suggested} (the paper's ratio, "
                f"torch_arcad.suggest_num_prototypes); at most {max(rows // MIN_PATCHES_PER_PROTOTYPE, 1)} keeps "
                f"{MIN_PATCHES_PER_PROTOTYPE} patches per prototype.{single}",
                stacklevel=_USER_FRAME,
            )

    @torch.no_grad()
    def score(self, features: Tensor) -> ArcADScores:
        """Anomaly maps from the calibrated latent space, for inference.

        Both maps come from one pass over the features, without gradient and without touching any state.

        Args:
            features: any layout :meth:`forward` accepts.

        Returns:
            :class:`ArcADScores` with (B, h, w) maps on the feature grid: prototype distance
            ``1 - max_k z . mu_k`` and discriminator probability (which, with ``discriminator_distance=True``,
            reads that distance too).
        """
        if not self.prototypes.is_ready:
            raise RuntimeError(
                "score() needs initialised prototypes: train some steps first (they initialise from the first "
                f"{self.prototypes.init_size} normal patches) or call arcad.prototypes.init_prototypes(features)"
            )
        patches, (h, w) = self._patches(features)
        with torch.autocast(device_type=patches.device.type, enabled=False):
            z = F.normalize(patches.float(), dim=-1)
            distance = 1 - (z @ self.prototypes.prototypes.t()).amax(dim=-1)
        was_training = self.discriminator.training
        self.discriminator.eval()
        try:
            reads = self.discriminator.reads_distance
            probability = torch.sigmoid(
                self.discriminator(
                    rearrange(z, "b n d -> (b n) d"), rearrange(distance, "b n -> (b n)") if reads else None
                ).float()
            )
        finally:
            self.discriminator.train(was_training)
        return ArcADScores(
            rearrange(distance, "b (h w) -> b h w", h=h, w=w),
            rearrange(probability, "(b h w) -> b h w", h=h, w=w),
        )


def _nonfinite_message(count: int) -> str:
    return (
        f"ArcAD received features with NaN or inf values ({count} patches so far): those patches are left out of "
        "every term (stats['num_nonfinite'] counts them per step); check the model producing the features"
    )


def _contradiction_message(count: int) -> str:
    return (
        f"{count} image(s) labelled normal (label 0) have defect pixels in their mask: they are treated as normal, "
        "as the labels say; pass labels=None to derive the labels from the masks"
    )


def _check_arguments(**arguments: object) -> None:
    """Types and ranges of :class:`ArcAD`'s numeric arguments (clear ``TypeError`` / ``ValueError``)."""
    check_int("dim", arguments["dim"], 1)
    check_int("num_prototypes", arguments["num_prototypes"], 1)
    if arguments["hidden_dim"] is not None:
        check_int("hidden_dim", arguments["hidden_dim"], 1)
    check_int("prefix_tokens", arguments["prefix_tokens"], 0)
    for name in ("lambda_spm", "lambda_dgc", "lambda_cls", "mask_threshold"):
        check_number(name, arguments[name], 0.0)
    check_number("init_factor", arguments["init_factor"], 1.0)
