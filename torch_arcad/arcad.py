"""The ArcAD composite (eq. 10): SPM + DGC + focal discriminator behind one call."""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ._released import discriminator_logits_by_group, trunc_normal_init_
from ._validation import DeferredWarnings, check_floating, check_int
from .calibration import DefectGuidedLoss
from .config import ArcADConfig, get_preset
from .discriminator import FocalDiscriminator
from .distributed import all_reduce_sum, global_means
from .layout import features_to_patches
from .patches import PatchWeighting, PatchWeights, keep_missed, missed_anomalies
from .prototypes import MIN_PATCHES_PER_PROTOTYPE, PrototypeOutput, SinkhornPrototypes, suggest_num_prototypes
from .synthesis import HypersphereAnomalySynthesizer

__all__ = ["ArcAD", "ArcADOutput", "ArcADScores"]

#: Warnings issued while checking the input point at the caller of ``arcad(...)``: the frames in between are the
#: checking method, ``forward`` and nn.Module's two call wrappers.
_USER_FRAME: int = 5


class ArcADOutput(NamedTuple):
    """Result of :meth:`ArcAD.forward`.

    Attributes:
        loss: ``lambda_spm * spm + lambda_dgc * dgc + lambda_cls * cls`` (eq. 10 without L_recon).
        spm: L_spm, eq. 4.
        dgc: L_dgc, eq. 8 (0 when the batch has no anomalous patch).
        cls: L_cls, eq. 9.
        stats: detached diagnostics, the same keys at every step: ``initialized``; ``num_normal`` and
            ``num_anomalous`` patches (finite ones only; ``num_calibrated`` of the anomalous ones took part in
            eq. 8-9: all of them, or with ``calibrate="missed"`` those the detector missed); ``num_nonfinite`` patches (a NaN or inf anywhere in
            the row), which took part in no term; ``prototype_usage`` (K,) hard assignments of the normal
            patches and ``prototypes_in_use``, how many prototypes hold at least one; ``normal_similarity``, the
            normal patches' mean cosine to their nearest prototype, and ``anomalous_similarity``, the real
            anomalies' (falling normal similarity over training means the normal texture drifts away from the
            prototypes); ``discriminator_accuracy`` (3,) on normal, synthetic and real anomalous patches. Before
            the prototypes are initialised the similarities and accuracies are NaN and the usage zero; a mean
            over no patch is NaN. Reading them synchronises; the loss path does not.
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

    One step follows the paper: the patches are selected and weighted (:class:`~torch_arcad.patches.PatchWeighting`:
    normal patches are those of label-0 images, real anomalies (eq. 7) the mask-selected patches of label-1
    images), the prototypes give L_spm (:class:`~torch_arcad.SinkhornPrototypes`, eq. 2-4), pseudo-anomalies are
    synthesised from the normal patches (:class:`~torch_arcad.HypersphereAnomalySynthesizer`, eq. 5-6), the real
    anomalies are calibrated against both (:class:`~torch_arcad.DefectGuidedLoss`, eq. 8) and the discriminator
    separates normal from synthetic and real anomalies (:class:`~torch_arcad.FocalDiscriminator`, eq. 9). Every
    term is a weighted sum over all patches rather than a boolean selection, so shapes are static and no step
    waits on the device.

    Bad input does not poison training: a patch with a NaN or inf feature gets weight 0 in every term and is
    counted in ``stats["num_nonfinite"]``; a label-0 image whose mask marks defect pixels is treated as normal (the
    labels decide). One-time warnings, which never wait for the device, report non-finite features, such
    contradictions, defective images with no anomalous patch, defective labels without masks, and a K too large
    for the normal patches of a step (:func:`~torch_arcad.prototypes.suggest_num_prototypes`).

    ``arcad.half()`` and ``arcad.to(torch.bfloat16)`` convert the discriminator only: the prototypes stay float32
    buffers and every loss is computed in float32.

    Args:
        dim: feature dimension D of the bottleneck output.
        num_prototypes: K (paper 500 for 16 x 784 patches a step; the released code uses 800 for MVTec AD and
            MANTA). Choose it for the normal patches a step holds: :func:`~torch_arcad.suggest_num_prototypes`.
        preset: ``"paper"`` (default) or ``"official"`` (the released code at each point where it departs from the
            paper), or an :class:`~torch_arcad.ArcADConfig`.
        prefix_tokens: leading non-patch tokens of a (B, N, D) input (Dinomaly: 5 = CLS + 4 registers).
        **overrides: single settings of :class:`~torch_arcad.ArcADConfig` by name, e.g. ``lambda_dgc=0.05`` or
            ``mask_threshold=0.25``; ``None`` keeps the preset's value.
    """

    def __init__(
        self,
        dim: int,
        num_prototypes: int = 500,
        *,
        preset: str | ArcADConfig = "paper",
        prefix_tokens: int = 0,
        **overrides: object,
    ) -> None:
        super().__init__()
        check_int("dim", dim, 1)
        check_int("num_prototypes", num_prototypes, 1)
        check_int("prefix_tokens", prefix_tokens, 0)
        config = get_preset(preset, **overrides)
        self.dim = dim
        self.prefix_tokens = prefix_tokens
        self.preset = preset if isinstance(preset, str) else "custom"
        self.config = config
        self.weighting = PatchWeighting(
            config.mask_threshold, config.mask_weighting, config.mask_level, config.cls_anomalies
        )
        self.prototypes = SinkhornPrototypes(
            dim,
            num_prototypes,
            temperature=config.temperature,
            epsilon=config.epsilon,
            sinkhorn_iterations=config.sinkhorn_iterations,
            momentum=config.momentum,
            init_factor=config.init_factor,
            seed=config.seed,
            few_rows=config.few_patch_assignment,
        )
        self.synthesizer = HypersphereAnomalySynthesizer(config.sigma, config.num_candidates)
        self.calibration = DefectGuidedLoss(clamp_push=config.clamp_push)
        self.discriminator = FocalDiscriminator(
            dim,
            config.hidden_dim,
            alpha=config.alpha,
            gamma=config.gamma,
            norm=config.discriminator_norm,
            weighting=config.cls_weighting,
        )
        if config.discriminator_init == "trunc_normal":
            trunc_normal_init_(self.discriminator)
        self._input_warnings = DeferredWarnings(
            (_nonfinite_message, _contradiction_message, _no_anomaly_message, _no_mask_message),
            stacklevel=_USER_FRAME,
        )
        self._warned_num_prototypes = False

    def extra_repr(self) -> str:
        settings = ", ".join(f"{name}={value!r}" for name, value in self.config.to_dict().items())
        return f"dim={self.dim}, prefix_tokens={self.prefix_tokens}, preset={self.preset!r},\n{settings}"

    @property
    def initialized(self) -> bool:
        """Whether the prototypes are initialised (until then every term is zero)."""
        return self.prototypes.is_ready

    def _patches(self, features: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """(B, n, D) patches of the grid (h, w), checked against ``dim`` with the caller's own shape in the error."""
        patches, grid = features_to_patches(features, self.prefix_tokens)
        check_floating("features", patches)
        if patches.shape[-1] != self.dim:
            layout = "(B, N, D)" if features.dim() == 3 else "(B, D, H, W)"
            raise ValueError(
                f"features must have shape {layout} with D = dim = {self.dim}, got shape {tuple(features.shape)} "
                f"(D = {patches.shape[-1]})"
            )
        return patches, grid

    def forward(
        self,
        features: Tensor,
        *,
        masks: Tensor | None = None,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
        scores: Tensor | None = None,
    ) -> ArcADOutput:
        """The three ArcAD terms on one batch.

        Args:
            features: bottleneck output for the whole batch: (B, N, D) tokens (the first ``prefix_tokens`` are
                dropped, the rest form a square grid) or (B, D, H, W) maps.
            masks: ground-truth masks at image resolution, (B, H, W) or (B, 1, H, W); None when the batch has no
                defective image. A floating mask pixel is a defect pixel above ``mask_level`` times its own mask's
                peak (:attr:`~torch_arcad.ArcADConfig.mask_level`), so a soft or faded thin defect is kept.
            labels: (B,) image labels, non-zero for defective images; derived from ``masks`` when absent.
            generator: optional random generator for the synthesis noise.
            scores: the detector's own anomaly map of the batch, (B, H, W) or (B, 1, H, W) at any resolution,
                higher for more anomalous: its reconstruction error computed as at inference (eval mode, no
                gradient), which is averaged over each patch of the grid. Needed by ``calibrate="missed"``, which
                then calibrates only the real anomalies whose patch scores no higher than the step's highest
                normal patch; unused otherwise.

        Returns:
            :class:`ArcADOutput`.
        """
        patches, grid = self._patches(features)
        z, finite = _unit_patches(patches)
        w = self.weighting(finite, grid, masks, labels)  # eq. 7: which patches are normal, which real anomalies
        self._report_input(w, masks is not None, labels is not None)
        found = w  # every real anomaly, for the stats
        if self.config.calibrate == "missed":  # only the defects the detector's own score misses
            missed = missed_anomalies(
                self._scores(scores, patches.shape[0], grid), w.normal, self.prototypes.process_group,
                distributed=self.prototypes.gathers_globally,
            )
            w = keep_missed(w, missed)

        spm = self.prototypes(z, mask=w.normal > 0)  # eq. 2-4 (and the prototypes' EMA)
        if not self.prototypes.is_ready:
            zero = z.sum() * 0.0
            return ArcADOutput(zero, zero, zero, zero, self._stats(found, w, None, None))
        mu, push_similarities = self._calibration_prototypes(spm)
        synthetic = self.synthesizer(z, mu, generator=generator)  # eq. 5-6, one per patch (normal ones count)
        synthetic_mean = self._synthetic_mean(synthetic, w.normal, mu, generator)
        dgc_sum = self.calibration(  # eq. 8, summed: its mean is taken with eq. 9's below
            z, mu, synthetic_mean, anomaly_weight=w.real, similarities=push_similarities, reduction="sum"
        )
        logits = self._discriminator_logits(torch.cat([z, synthetic]), w)
        cls_sums, cls_counts = self.discriminator.group_sums(logits, *_discriminator_groups(w))  # eq. 9
        dgc, cls = self._means(dgc_sum, w.real_count.sum(), cls_sums, cls_counts)
        c = self.config
        loss = c.lambda_spm * spm.loss + c.lambda_dgc * dgc + c.lambda_cls * cls  # eq. 10 without L_recon
        return ArcADOutput(loss, spm.loss, dgc, cls, self._stats(found, w, spm, logits))

    def _scores(self, scores: Tensor | None, batch: int, grid: tuple[int, int]) -> Tensor:
        """The detector's anomaly map of the batch, checked and averaged over each patch: (B * n,) rows."""
        expected = f"(B, H, W) or (B, 1, H, W) with B = {batch} (any H, W; the patch grid is {grid[0]} x {grid[1]})"
        if scores is None:
            raise ValueError(
                'calibrate="missed" needs the detector\'s own anomaly map of the batch: arcad(features, masks=..., '
                f"labels=..., scores=...) with scores of shape {expected}"
            )
        if not isinstance(scores, Tensor):
            raise TypeError(f"scores must be a tensor, got {type(scores).__name__}")
        if scores.dim() == 4 and scores.shape[1] == 1:
            scores = scores.squeeze(1)
        if scores.dim() != 3 or scores.shape[0] != batch or min(scores.shape[1:]) < 1:
            raise ValueError(f"scores must have shape {expected}, got shape {tuple(scores.shape)}")
        check_floating("scores", scores)
        pooled = F.adaptive_avg_pool2d(scores.detach().float().unsqueeze(1), grid)  # mean over each patch
        return rearrange(pooled, "b 1 h w -> (b h w)")

    def _calibration_prototypes(self, spm: PrototypeOutput) -> tuple[Tensor, Tensor | None]:
        """The prototypes eqs. 5-8 see: the step's (pre-update, the E-step), with eq. 4's (N, K) similarities for
        eq. 8's push; or, as the released code, the EMA-updated ones (similarities then recomputed by eq. 8)."""
        if self.config.ema_before_synthesis:
            return self.prototypes.prototypes.detach().clone(), None
        return spm.prototypes, spm.similarities

    def _synthetic_mean(self, synthetic: Tensor, w_normal: Tensor, mu: Tensor, generator: torch.Generator | None) -> Tensor:
        """(1, D) mean of the normal patches' (detached) pseudo-anomalies, eq. 8's pull target; a global statistic
        under DDP. With ``pool_without_normals="prototypes"`` a step without any normal patch synthesises its pool
        from the prototypes instead (selected on the device, no host branch)."""
        stats = torch.cat([(w_normal.unsqueeze(1) * synthetic.detach()).sum(0), w_normal.sum().unsqueeze(0)])
        from_prototypes = self.config.pool_without_normals == "prototypes"
        if from_prototypes:
            with torch.no_grad():
                pool = self.synthesizer(mu, mu, generator=generator)
            stats = torch.cat([stats, pool.sum(0), pool.new_full((1,), float(pool.shape[0]))])
        if self.prototypes.gathers_globally:
            stats = all_reduce_sum(stats.clone(), self.prototypes.process_group)
        mean = stats[: self.dim] / stats[self.dim].clamp_min(1)
        if from_prototypes:
            pool_mean = stats[self.dim + 1 : -1] / stats[-1].clamp_min(1)
            mean = torch.where(stats[self.dim] > 0, mean, pool_mean)
        return mean.unsqueeze(0)

    def _discriminator_logits(self, x: Tensor, w: PatchWeights) -> Tensor:
        """(2N,) logits of ``[patches; pseudo-anomalies]`` (2N, D).

        ``"joint"``: one batch. ``"grouped"``: BatchNorm statistics per group, as the released code's three calls:
        the normal patches, their pseudo-anomalies, the real positives. Pseudo-anomalies of defective-image patches
        take the second group's statistics with weight 0 (their loss weight is 0 too).
        """
        if self.config.discriminator_batches == "joint":
            return self.discriminator(x)
        normal = w.normal > 0
        group = torch.cat([torch.where(normal, 0, 2), torch.ones_like(normal, dtype=torch.long)])
        weight = torch.cat([torch.where(normal, w.normal, w.cls_real), w.normal])
        return discriminator_logits_by_group(self.discriminator, x, group, weight, num_groups=3)

    def _means(self, dgc_sum: Tensor, dgc_count: Tensor, cls_sums: Tensor, cls_counts: Tensor) -> tuple[Tensor, Tensor]:
        """Eq. 8's mean and eq. 9's weighted means from per-rank sums and counts: one collective under DDP."""
        term_sums, term_counts, coefficients = self.discriminator.combine_groups(cls_sums, cls_counts)
        sums = torch.cat([dgc_sum.unsqueeze(0), term_sums])
        counts = torch.cat([dgc_count.unsqueeze(0), term_counts])
        if self.prototypes.gathers_globally:
            means = global_means(sums, counts, self.prototypes.process_group)
        else:
            means = sums / counts.clamp_min(1)
        return means[0], sum(c * m for c, m in zip(coefficients, means[1:]))

    @torch.no_grad()
    def _stats(
        self, w: PatchWeights, calibrated: PatchWeights, spm: PrototypeOutput | None, logits: Tensor | None
    ) -> dict[str, Tensor]:
        """:attr:`ArcADOutput.stats` of the step: ``w`` the real anomalies of eq. 7, ``calibrated`` those eq. 8-9
        took (the same but with ``calibrate="missed"``); ``spm`` and ``logits`` are ``None`` before
        initialisation."""
        device = w.normal.device
        k = self.prototypes.num_prototypes
        stats = {
            "initialized": torch.full((), spm is not None, dtype=torch.bool, device=device),
            "num_normal": w.normal.sum(),
            "num_anomalous": w.real_count.sum(),
            "num_calibrated": calibrated.real_count.sum(),
            "num_nonfinite": (~w.finite).sum().float(),
        }
        if spm is None or logits is None:
            nan = torch.full((), float("nan"), device=device)
            return stats | {
                "prototype_usage": torch.zeros(k, device=device),
                "prototypes_in_use": torch.zeros((), device=device),
                "normal_similarity": nan,
                "anomalous_similarity": nan.clone(),
                "discriminator_accuracy": torch.full((3,), float("nan"), device=device),
            }
        best, nearest = spm.similarities.max(dim=1)
        usage = torch.zeros(k, device=device).index_add_(0, nearest, w.normal)
        logits_z, logits_syn = logits.float().split(w.normal.shape[0])
        correct_z = ((logits_z > 0).float() == calibrated.cls_target).float()
        accuracy = torch.stack(
            [
                _weighted_mean(correct_z, w.normal),
                _weighted_mean((logits_syn > 0).float(), w.normal),
                _weighted_mean((logits_z > 0).float(), w.cls_target),
            ]
        )
        return stats | {
            "prototype_usage": usage,
            "prototypes_in_use": (usage > 0).sum().float(),
            "normal_similarity": _weighted_mean(best, w.normal),
            "anomalous_similarity": _weighted_mean(best, w.real_count),
            "discriminator_accuracy": accuracy,
        }

    def _report_input(self, w: PatchWeights, has_masks: bool, has_labels: bool) -> None:
        """The one-time warnings about the input: non-finite patches, normal-labelled images with defect pixels,
        defective images without an anomalous patch, defective labels without masks (all deferred: never waits
        for the device), and a K too large for the step's normal patches."""
        if torch.compiler.is_compiling():
            return  # Python side effects would break the graph; the counts remain in `stats`
        if not all(self._input_warnings.issued):
            zero = w.defective.new_zeros((), dtype=torch.long)
            counts = torch.stack(
                [
                    (~w.finite).sum(),
                    (w.marked & ~w.defective).sum() if has_labels and has_masks else zero,
                    (w.defective & ~w.anomalous.any(dim=1)).sum() if has_masks else zero,
                    w.defective.sum() if has_labels and not has_masks else zero,
                ]
            )
            self._input_warnings.update(counts)
        if self._warned_num_prototypes:
            return
        k = self.prototypes.num_prototypes
        rows = w.finite.shape[0]  # static: an upper bound of the normal patches, read without a sync
        if self.training and not self.prototypes.is_ready:
            # Initialisation steps only: the prototypes' buffering reads counts on the host anyway.
            rows = int((~w.defective).sum()) * (rows // w.defective.shape[0])
        if rows == 0:
            return  # a batch without a normal image says nothing about K: keep the warning for one that does
        suggested = suggest_num_prototypes(rows)
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
            ``1 - max_k z . mu_k`` and discriminator probability.
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
            probability = torch.sigmoid(self.discriminator(rearrange(z, "b n d -> (b n) d")).float())
        finally:
            self.discriminator.train(was_training)
        return ArcADScores(
            rearrange(distance, "b (h w) -> b h w", h=h, w=w),
            rearrange(probability, "(b h w) -> b h w", h=h, w=w),
        )


def _unit_patches(patches: Tensor) -> tuple[Tensor, Tensor]:
    """``(z, finite)``: the (B * n, D) float32 unit patches, flattened ``'b n d -> (b n) d'``, and which of the
    (B, n) patches are finite. A NaN / inf patch is zeroed (a select, so no NaN reaches any gradient) and then takes
    part in no term through its weights."""
    finite = torch.isfinite(patches).all(dim=-1)
    patches = torch.where(finite.unsqueeze(-1), patches, patches.new_zeros(()))
    return rearrange(F.normalize(patches.float(), dim=-1), "b n d -> (b n) d"), finite


def _discriminator_groups(w: PatchWeights) -> tuple[Tensor, Tensor, Tensor]:
    """Eq. 9's three groups over ``[patches; pseudo-anomalies]``: the (2N,) targets, the (3, 2N) weights of the
    normal patches, their pseudo-anomalies and the real positives, and the (3,) counts their means divide by."""
    none = torch.zeros_like(w.normal)
    targets = torch.cat([w.cls_target, torch.ones_like(w.normal)])
    weights = torch.stack(
        [torch.cat([w.normal, none]), torch.cat([none, w.normal]), torch.cat([w.cls_real, none])]
    )
    counts = torch.stack([w.normal.sum(), w.normal.sum(), w.cls_target.sum()])
    return targets, weights, counts


def _weighted_mean(x: Tensor, weight: Tensor) -> Tensor:
    """``sum(w x) / sum(w)``, NaN when the weights are all zero (a mean over no patch)."""
    total = weight.sum()
    return torch.where(total > 0, (x * weight).sum() / total.clamp_min(torch.finfo(total.dtype).tiny), torch.nan)


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


def _no_anomaly_message(count: int) -> str:
    return (
        f"{count} defective image(s) have no anomalous patch (no patch with a defect fraction above "
        "mask_threshold): they add no real anomaly to L_dgc or L_cls, and their patches are not used as normal "
        "either; check their masks, or lower mask_threshold"
    )


def _no_mask_message(count: int) -> str:
    return (
        f"{count} image(s) are labelled defective but no masks were given: ArcAD cannot tell which of their patches "
        "are defects, so they add no real anomaly to L_dgc (eq. 8); pass masks=... with the labels"
    )
