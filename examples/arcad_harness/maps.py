"""Anomaly maps: cosine distances, upsampling, the Gaussian blur of the baselines' evaluation, image scores."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "BLUR_SIGMA",
    "cosine_distance_map",
    "gaussian_blur",
    "gaussian_kernel1d",
    "max_score",
    "top_fraction_score",
    "upsample",
]

#: The baselines' evaluation blurs maps with a Gaussian of sigma 4 pixels (RD4AD, ReContrast, Dinomaly).
BLUR_SIGMA: float = 4.0
#: Kernel radius in sigmas, as ``scipy.ndimage.gaussian_filter`` (what RD4AD and ReContrast call) truncates.
BLUR_TRUNCATE: float = 4.0
#: Dinomaly's image score: the mean of the top 1% of map values.
TOP_FRACTION: float = 0.01


def cosine_distance_map(target: Tensor, reconstruction: Tensor) -> Tensor:
    """``1 - cos`` over channels at every position.

    Args:
        target, reconstruction: float (B, C, h, w).

    Returns:
        float (B, h, w) in [0, 2].
    """
    if target.shape != reconstruction.shape or target.dim() != 4:
        raise ValueError(
            f"expected two (B, C, h, w) maps of one shape, got {tuple(target.shape)} and {tuple(reconstruction.shape)}"
        )
    return 1.0 - F.cosine_similarity(target, reconstruction, dim=1)


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling of (B, h, w) maps to (B, H, W) (``align_corners=True``, as the baselines do)."""
    if maps.dim() != 3:
        raise ValueError(f"expected maps of shape (B, h, w), got {tuple(maps.shape)}")
    return F.interpolate(maps.unsqueeze(1).float(), size=size, mode="bilinear", align_corners=True).squeeze(1)


def gaussian_kernel1d(sigma: float, radius: int, device: torch.device | None = None) -> Tensor:
    """Normalised Gaussian taps ``exp(-x^2 / (2 sigma^2))`` for x in [-radius, radius]: float32 (2 radius + 1,)."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    kernel = torch.exp(-(x**2) / (2.0 * sigma**2))
    return kernel / kernel.sum()


def _symmetric_pad(x: Tensor, radius: int, dim: int) -> Tensor:
    """Pad by mirroring with the edge sample repeated (``scipy.ndimage`` mode ``"reflect"``)."""
    head = x.narrow(dim, 0, radius).flip(dim)
    tail = x.narrow(dim, x.shape[dim] - radius, radius).flip(dim)
    return torch.cat([head, x, tail], dim=dim)


def gaussian_blur(maps: Tensor, sigma: float = BLUR_SIGMA, truncate: float = BLUR_TRUNCATE) -> Tensor:
    """Separable Gaussian blur of (B, H, W) maps, as ``scipy.ndimage.gaussian_filter(m, sigma)`` per map.

    The radius is ``int(truncate * sigma + 0.5)`` (16 for sigma 4), capped at the map side for tiny maps;
    borders are mirrored with the edge sample repeated.

    Args:
        maps: float (B, H, W).
        sigma: standard deviation in pixels.
        truncate: radius in standard deviations.

    Returns:
        float32 (B, H, W).
    """
    if maps.dim() != 3:
        raise ValueError(f"expected maps of shape (B, H, W), got {tuple(maps.shape)}")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    x = maps.float().unsqueeze(1)
    radius = int(truncate * sigma + 0.5)
    for dim in (2, 3):
        r = min(radius, x.shape[dim])
        if r == 0:
            continue
        kernel = gaussian_kernel1d(sigma, r, x.device)
        shape = [1, 1, 1, 1]
        shape[dim] = kernel.numel()
        x = F.conv2d(_symmetric_pad(x, r, dim), kernel.view(shape))
    return x.squeeze(1)


def max_score(maps: Tensor) -> Tensor:
    """Image score = the largest map value (RD4AD, ReContrast): (B, H, W) -> (B,)."""
    return maps.flatten(1).amax(dim=1)


def top_fraction_score(maps: Tensor, fraction: float = TOP_FRACTION) -> Tensor:
    """Image score = the mean of the top ``fraction`` of map values (Dinomaly, 1%): (B, H, W) -> (B,).

    At least one value is used.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    flat = maps.flatten(1)
    k = max(1, int(math.floor(flat.shape[1] * fraction)))
    return flat.topk(k, dim=1).values.mean(dim=1)
