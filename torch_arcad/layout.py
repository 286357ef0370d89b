"""From a bottleneck's output and image-resolution masks to per-patch features and patch labels."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

__all__ = ["DefectFractions", "features_to_patches", "image_labels", "mask_fractions", "masks_to_patches",
           "summarize_defect_fractions"]

#: The defect fraction that splits thin defects from defects that fill their patches (docs/results.md).
THIN_DEFECT_FRACTION: float = 0.25


def features_to_patches(features: Tensor, prefix_tokens: int = 0) -> tuple[Tensor, tuple[int, int]]:
    """Bring a bottleneck output to patch tokens on a grid.

    Args:
        features: (B, N, D) tokens, of which the first ``prefix_tokens`` (class and register tokens) are dropped
            and the remaining N - prefix_tokens form a square grid in row-major order; or (B, D, H, W) maps.
        prefix_tokens: number of leading non-patch tokens of a token input.

    Returns:
        ``(patches, (h, w))`` with patches (B, h * w, D) in row-major grid order.
    """
    if not isinstance(features, Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if features.dim() == 4:
        if prefix_tokens:
            raise ValueError("prefix_tokens applies to (B, N, D) token inputs, not (B, D, H, W) feature maps")
        h, w = features.shape[2:]
        return rearrange(features, "b d h w -> b (h w) d"), (h, w)
    if features.dim() == 3:
        num_tokens = features.shape[1] - prefix_tokens
        side = math.isqrt(max(num_tokens, 0))
        if num_tokens <= 0 or side * side != num_tokens:
            raise ValueError(
                f"token features (B, N, D) must hold prefix_tokens={prefix_tokens} tokens followed by a square "
                f"grid of patches, got N={features.shape[1]} ({num_tokens} patch tokens is not a square)"
            )
        return features[:, prefix_tokens:], (side, side)
    raise ValueError(
        f"features must have shape (B, N, D) (tokens) or (B, D, H, W) (maps), got shape {tuple(features.shape)}"
    )


def mask_fractions(masks: Tensor, batch: int, grid: tuple[int, int], *, level: float = 0.5) -> Tensor:
    """The fraction of defect pixels under each patch of the grid.

    A floating mask pixel is a defect pixel when it exceeds ``level`` times the peak of its own mask (0.5 by
    default: half the peak), integer and boolean ones when non-zero (so 0/1, 0/255 and bool masks all work). For a
    0/1 mask the peak is 1 and this is the plain ``mask > level``. Taken relative to the peak, a defect that a
    smoothing resize has faded is kept: a 1-pixel scratch resized bilinearly from 256 to 64 px peaks near 0.16, below
    an absolute 0.5, yet its peak pixel always counts, so a defective image never loses its defect to the resize.
    A mask that is zero everywhere has no defect pixel. Each patch covers the pixels an adaptive average pool gives
    it.

    Args:
        masks: (B, H, W) or (B, 1, H, W) at image resolution, H >= h and W >= w, with the grid's aspect ratio.
        batch: expected B.
        grid: (h, w) patch grid.
        level: pixel value in [0, 1) above which a floating mask pixel is a defect pixel.

    Returns:
        (B, h * w) float32 in [0, 1], row-major.
    """
    if not isinstance(masks, Tensor):
        raise TypeError(f"masks must be a torch.Tensor, got {type(masks).__name__}")
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.dim() != 3:
        raise ValueError(f"masks must have shape (B, H, W) or (B, 1, H, W), got {tuple(masks.shape)}")
    if masks.shape[0] != batch:
        raise ValueError(f"masks must have batch size B={batch} like the features, got shape {tuple(masks.shape)}")
    if not 0.0 <= level < 1.0:
        raise ValueError(f"mask_level must be in [0, 1), got {level}")
    h, w = grid
    height, width = masks.shape[1:]
    expected_height = width * h / w  # the grid's aspect ratio, tolerated to within one patch row
    if height < h or width < w or abs(height - expected_height) >= height / h:
        raise ValueError(
            f"masks of spatial size ({height}, {width}) cannot be matched to the ({h}, {w}) patch grid: they must be "
            "at least as large as the grid, with the same aspect ratio"
        )
    if masks.is_floating_point():
        # relative to each mask's own peak: a faded thin defect keeps its peak pixel (an all-zero mask stays empty)
        peak = masks.detach().flatten(1).amax(dim=1).clamp_min(0)
        binary = (masks > level * rearrange(peak, "b -> b 1 1")) & rearrange(peak > 0, "b -> b 1 1")
    else:
        binary = masks != 0
    fraction = F.adaptive_avg_pool2d(binary.unsqueeze(1).float(), (h, w))
    return rearrange(fraction, "b 1 h w -> b (h w)")


def masks_to_patches(
    masks: Tensor, batch: int, grid: tuple[int, int], threshold: float = 0.0, *, level: float = 0.5
) -> Tensor:
    """Down-sample ground-truth masks to the patch grid.

    A patch is anomalous when the fraction of defect pixels under it (:func:`mask_fractions`) exceeds
    ``threshold``; with 0.0 any defect pixel suffices (an adaptive max-pool). With ``level=0.0`` and
    ``threshold=0.0`` this is the released code's ``adaptive_max_pool2d(mask) > 0`` on the raw mask: the soft
    fringe of a bilinearly resized mask marks the patches it touches.

    Args:
        masks: (B, H, W) or (B, 1, H, W) at image resolution, H >= h and W >= w, with the grid's aspect ratio.
        batch: expected B.
        grid: (h, w) patch grid.
        threshold: defect fraction in [0, 1).
        level: pixel value in [0, 1) above which a floating mask pixel is a defect pixel.

    Returns:
        (B, h * w) boolean, row-major.
    """
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"mask_threshold must be in [0, 1), got {threshold}")
    return mask_fractions(masks, batch, grid, level=level) > threshold


def image_labels(labels: Tensor | None, patch_anomalous: Tensor | None, batch: int, device: torch.device) -> Tensor:
    """(B,) boolean image labels: the given ``labels`` (non-zero = defective), else whether a mask has a defect."""
    if labels is None:
        if patch_anomalous is None:
            return torch.zeros(batch, dtype=torch.bool, device=device)
        return patch_anomalous.any(dim=1)
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor of shape (B,), got {type(labels).__name__}")
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ValueError(f"labels must have shape (B,) = ({batch},), got {tuple(labels.shape)}")
    return (labels > 0.5 if labels.is_floating_point() else labels != 0).to(device)


class DefectFractions(NamedTuple):
    """How much of the anomalous patches of a set of masks is defect (:func:`summarize_defect_fractions`).

    Attributes:
        images: masks with at least one defect pixel.
        patches: anomalous patches (a defect pixel under them: eq. 7's real anomalies at ``mask_threshold=0``).
        mean: their mean defect fraction, in [0, 1] (NaN without any): the share of eq. 8's force that
            ``mask_weighting="fraction"`` keeps.
        median: their median defect fraction.
        at_least_quarter: how many are at least a quarter defect (``mask_threshold=0.25`` keeps about these).
    """

    images: int
    patches: int
    mean: float
    median: float
    at_least_quarter: int

    @property
    def thin(self) -> bool:
        """Whether the defects are much thinner than a patch: mean fraction below :data:`THIN_DEFECT_FRACTION`."""
        return bool(self.mean < THIN_DEFECT_FRACTION)


def summarize_defect_fractions(masks: Tensor, grid: tuple[int, int] | int, *, level: float = 0.5) -> DefectFractions:
    """The defect fractions of the anomalous patches of ``masks`` on the bottleneck's patch grid.

    One call tells which case a data set is: defects that fill their patches (magnetic_tile: a mean of 75-84%)
    or thin defects that graze them (tire, KolektorSDD: about 19%), where ArcAD's push moves mostly normal texture.
    It reads the values to the host (not for a training step).

    Args:
        masks: (N, H, W) or (N, 1, H, W) masks of the defective images, read as :func:`mask_fractions` reads them.
        grid: the (h, w) patch grid of the bottleneck, or its side.
        level: as in :func:`mask_fractions`.

    Returns:
        :class:`DefectFractions`.
    """
    grid = (grid, grid) if isinstance(grid, int) else tuple(grid)
    fractions = mask_fractions(masks, masks.shape[0], grid, level=level)
    anomalous = fractions[fractions > 0].double()
    empty = anomalous.numel() == 0
    return DefectFractions(
        images=int((fractions > 0).any(dim=1).sum()),
        patches=int(anomalous.numel()),
        mean=math.nan if empty else float(anomalous.mean()),
        median=math.nan if empty else float(anomalous.median()),
        at_least_quarter=int((anomalous >= THIN_DEFECT_FRACTION).sum()),
    )
