"""Input standardisation shared by the backbones."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

IN_CHANNELS: int = 3


def standardize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(images - mean) / std`` per channel.

    Args:
        images: float tensor (B, 3, H, W), RGB, values in [0, 1].
        mean, std: three per-channel values each.

    Returns:
        Float tensor (B, 3, H, W), same dtype and device.
    """
    if images.ndim != 4 or images.shape[1] != IN_CHANNELS:
        raise ValueError(f"expected images of shape (B, 3, H, W), received {tuple(images.shape)}")
    shape = (1, IN_CHANNELS, 1, 1)
    return (images - images.new_tensor(mean).view(shape)) / images.new_tensor(std).view(shape)
