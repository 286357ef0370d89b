"""Which patches of a batch are normal, which are real anomalies (eq. 7), and with what weight each enters eq. 8-9.

:class:`PatchWeighting` is the policy :class:`~torch_arcad.ArcAD` applies before its terms: from the masks and
labels of a batch it gives every patch 0/1 or fractional weights, so that every term is a weighted sum over all
patches (static shapes, no boolean selection, no host synchronisation).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
from einops import rearrange
from torch import Tensor

from .config import MASK_WEIGHTINGS
from .distributed import all_reduce_max
from .layout import image_labels, mask_fractions

__all__ = ["PatchWeighting", "PatchWeights", "keep_missed", "missed_anomalies"]


class PatchWeights(NamedTuple):
    """Per-patch weights of one batch; every (B * n,) row is flattened ``'b n -> (b n)'``.

    Attributes:
        finite: (B * n,) bool, the patch's feature is finite (a NaN or inf patch takes part in no term).
        normal: (B * n,) float 0/1, normal patches: the finite patches of label-0 images (eq. 4, 5-6, eq. 9's
            normal group).
        real: (B * n,) float, each real anomaly's weight in eq. 8 (1, or its defect fraction).
        real_count: (B * n,) float 0/1, real anomalies (eq. 7); eq. 8's mean divides by their number.
        cls_real: (B * n,) float, each patch's weight in eq. 9's real group.
        cls_target: (B * n,) float 0/1, eq. 9's target of each patch, and what its real group's mean divides by.
        anomalous: (B, n) bool, patches whose defect fraction exceeds the threshold (any image).
        marked: (B,) bool, images whose mask marks at least one defect pixel.
        defective: (B,) bool, defective images: the labels, else ``marked`` (so an image whose defect is too thin
            for the threshold is still defective: its patches are never taken as normal).
    """

    finite: Tensor
    normal: Tensor
    real: Tensor
    real_count: Tensor
    cls_real: Tensor
    cls_target: Tensor
    anomalous: Tensor
    marked: Tensor
    defective: Tensor


class PatchWeighting:
    """The selection and weighting policy of real anomaly patches.

    An image is defective when its label says so, or, without labels, when its mask marks any defect pixel. A
    patch is a real anomaly (eq. 7) when its image is defective and the share of its pixels that are defect
    pixels (:func:`~torch_arcad.layout.mask_fractions`) exceeds ``threshold``. With ``weighting="binary"`` (the
    paper) each real anomaly has weight 1 in eq. 8 and in eq. 9's real group; with ``"fraction"`` its terms are
    multiplied by its defect fraction while the means stay over the anomalous patches. Eq. 9's positives are the
    real anomalies (``cls_anomalies="masked"``) or every patch of a defective image (``"image"``, the released
    code; then unweighted).

    Args:
        threshold: defect fraction in [0, 1) above which a patch is anomalous.
        weighting: ``"binary"`` or ``"fraction"``.
        level: a floating mask pixel is a defect pixel above this share of its mask's peak.
        cls_anomalies: ``"masked"`` or ``"image"``.

    The values are checked by :class:`~torch_arcad.ArcADConfig`, which is where they are set.
    """

    def __init__(self, threshold: float, weighting: str, level: float, cls_anomalies: str) -> None:
        if weighting not in MASK_WEIGHTINGS:
            raise ValueError(f"weighting must be one of {MASK_WEIGHTINGS}, got {weighting!r}")
        self.threshold = threshold
        self.weighting = weighting
        self.level = level
        self.cls_anomalies = cls_anomalies

    def __repr__(self) -> str:
        return (
            f"PatchWeighting(threshold={self.threshold}, weighting={self.weighting!r}, level={self.level}, "
            f"cls_anomalies={self.cls_anomalies!r})"
        )

    def __call__(
        self, finite: Tensor, grid: tuple[int, int], masks: Tensor | None, labels: Tensor | None
    ) -> PatchWeights:
        """The weights of one batch.

        Args:
            finite: (B, n) bool, which patches have a finite feature.
            grid: the (h, w) patch grid, ``h * w = n``.
            masks: (B, H, W) or (B, 1, H, W) masks at image resolution, or ``None``.
            labels: (B,) image labels (non-zero: defective), or ``None`` (derived from the masks).

        Returns:
            :class:`PatchWeights`.
        """
        batch, num_patches = finite.shape
        device = finite.device
        fractions = mask_fractions(masks, batch, grid, level=self.level).to(device) if masks is not None else None
        if fractions is None:
            fractions = torch.zeros(batch, num_patches, device=device)
        anomalous = fractions > self.threshold
        marked = (fractions > 0).any(dim=1)
        defective = image_labels(labels, rearrange(marked, "b -> b 1") if masks is not None else None, batch, device)
        per_image = rearrange(defective, "b -> b 1")
        flat_finite = rearrange(finite, "b n -> (b n)")
        normal = rearrange(~per_image & finite, "b n -> (b n)").float()
        real_count = rearrange(anomalous & per_image & finite, "b n -> (b n)").float()
        real = real_count
        if self.weighting == "fraction":
            real = real_count * rearrange(fractions, "b n -> (b n)")
        if self.cls_anomalies == "image":
            cls_target = rearrange(per_image & finite, "b n -> (b n)").float()
            cls_real = cls_target
        else:
            cls_target, cls_real = real_count, real
        return PatchWeights(flat_finite, normal, real, real_count, cls_real, cls_target, anomalous, marked, defective)


def missed_anomalies(
    scores: Tensor, normal: Tensor, group: dist.ProcessGroup | None = None, *, distributed: bool = False
) -> Tensor:
    """Which patches the detector's own score misses: a score no higher than the step's highest normal patch's.

    A defect patch scored above every normal patch of the step is already found by the detector; the others are
    missed. Computed on the device (no host synchronisation); under DDP the highest normal score is the maximum
    over all processes (one ``all_reduce``). A step without a normal patch with a finite score has nothing to
    compare with: every patch counts as missed. A non-finite score never counts as the highest normal score, and
    such a patch counts as missed.

    Args:
        scores: (B * n,) the detector's anomaly score of each patch (higher: more anomalous), any scale.
        normal: (B * n,) float 0/1 or bool, the normal patches.
        group: process group of the maximum (``None``: the default group), used with ``distributed=True``.
        distributed: take the maximum over the processes of ``group``.

    Returns:
        (B * n,) float 0/1.
    """
    scores = scores.detach().float()
    finite = torch.isfinite(scores)
    lowest = torch.finfo(scores.dtype).min
    highest = torch.where((normal > 0) & finite, scores, lowest).amax().reshape(1)
    if distributed:
        highest = all_reduce_max(highest, group)
    highest = torch.where(highest > lowest, highest, torch.finfo(scores.dtype).max)  # no normal score: keep all
    return ((scores <= highest) | ~finite).float()


def keep_missed(w: PatchWeights, missed: Tensor) -> PatchWeights:
    """``w`` with the real anomalies the detector already finds taken out of eq. 8 and eq. 9's real group.

    Args:
        w: the step's :class:`PatchWeights`.
        missed: (B * n,) float 0/1 from :func:`missed_anomalies`.

    Returns:
        :class:`PatchWeights` whose ``real``, ``real_count``, ``cls_real`` and ``cls_target`` are zero where
        ``missed`` is; the normal patches, ``anomalous`` and the image flags are unchanged (a defect the
        detector finds is still a defect, its patches still not normal).
    """
    return w._replace(
        real=w.real * missed,
        real_count=w.real_count * missed,
        cls_real=w.cls_real * missed,
        cls_target=w.cls_target * missed,
    )
