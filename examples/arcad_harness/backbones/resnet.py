"""ResNet-18 and Wide-ResNet-50-2 in plain PyTorch, key-compatible with torchvision checkpoints.

The state-dict key names are torchvision's (``conv1``, ``bn1``, ``layer{1-4}.{i}.conv{1,2,3}``,
``layer{1-4}.{i}.bn{1,2,3}``, ``layer{1-4}.0.downsample.{0,1}``, ``fc``), so the public ImageNet
checkpoints load strictly: 122 entries for ResNet-18 and 320 for Wide-ResNet-50-2 (counting
BatchNorm's ``num_batches_tracked``). Bottleneck blocks put the stride on the 3x3 convolution
("ResNet v1.5"), as torchvision does.

:meth:`ResNet.forward_features` returns the outputs of ``layer1``-``layer3`` (strides 4, 8, 16),
the encoder features that RD4AD and ReContrast reconstruct:

==================  ======  =======  =======
model               layer1  layer2   layer3
==================  ======  =======  =======
ResNet-18           64      128      256
Wide-ResNet-50-2    256     512      1024
==================  ======  =======  =======

Inputs are RGB images in [0, 1] standardised with the ImageNet mean/std (:func:`normalize`).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence, Type, Union

import torch
from torch import Tensor, nn

from ._preprocess import standardize
from .checkpoint import load_checkpoint

__all__ = [
    "INPUT_MEAN",
    "INPUT_STD",
    "RESNET18_IMAGENET_URL",
    "WIDE_RESNET50_2_IMAGENET_URL",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "normalize",
    "resnet18",
    "wide_resnet50_2",
]

#: torchvision's ImageNet checkpoints (``IMAGENET1K_V1``), used for ``weights="imagenet"``.
RESNET18_IMAGENET_URL: str = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
WIDE_RESNET50_2_IMAGENET_URL: str = (
    "https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth"
)
#: The value of ``weights`` that selects the public ImageNet checkpoint.
IMAGENET: str = "imagenet"

#: ImageNet per-channel mean and standard deviation (RGB, images scaled to [0, 1]).
INPUT_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
INPUT_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Channels expected in the input images and width of the stem.
IN_CHANNELS: int = 3
STEM_CHANNELS: int = 64
#: Kernel size and stride of the stem convolution, and of the max-pool after it.
STEM_KERNEL: int = 7
STEM_STRIDE: int = 2
POOL_KERNEL: int = 3
POOL_STRIDE: int = 2
#: Width per group of the standard ResNets; Wide-ResNet-50-2 doubles it.
BASE_WIDTH: int = 64
#: Base widths of the four layers (multiplied by the block's expansion at the output).
LAYER_PLANES: tuple[int, int, int, int] = (64, 128, 256, 512)
#: Number of ImageNet classes.
NUM_CLASSES: int = 1000


def normalize(images: Tensor) -> Tensor:
    """Standardise RGB images in [0, 1] with the ImageNet :data:`INPUT_MEAN` / :data:`INPUT_STD`.

    Args:
        images: float tensor (B, 3, H, W), RGB, values in [0, 1].

    Returns:
        Float tensor (B, 3, H, W), same dtype and device.
    """
    return standardize(images, INPUT_MEAN, INPUT_STD)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias."""
    return nn.Conv2d(
        in_planes, out_planes, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False
    )


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34).

    Args:
        inplanes: input channels.
        planes: output channels (``expansion`` is 1).
        stride: stride of the first convolution.
        downsample: module applied to the input when its shape differs from the output's.
        groups, base_width: must be 1 and 64 (kept for a signature shared with :class:`Bottleneck`).
    """

    expansion: int = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        groups: int = 1,
        base_width: int = BASE_WIDTH,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != BASE_WIDTH:
            raise ValueError(
                f"BasicBlock supports groups=1 and base_width={BASE_WIDTH}, "
                f"received groups={groups}, base_width={base_width}"
            )
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        """(B, inplanes, H, W) -> (B, planes, H / stride, W / stride)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (with the stride), 1x1 expand by 4, with a residual connection.

    The inner width is ``planes * base_width / 64 * groups`` (128 per ``planes = 64`` for
    Wide-ResNet-50-2).

    Args:
        inplanes: input channels.
        planes: base width; the output has ``planes * expansion`` channels.
        stride: stride of the 3x3 convolution.
        downsample: module applied to the input when its shape differs from the output's.
        groups: groups of the 3x3 convolution.
        base_width: width per group (64 for ResNet-50, 128 for Wide-ResNet-50-2).
    """

    expansion: int = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        groups: int = 1,
        base_width: int = BASE_WIDTH,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / BASE_WIDTH)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        """(B, inplanes, H, W) -> (B, 4 * planes, H / stride, W / stride)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


Block = Union[Type[BasicBlock], Type[Bottleneck]]


class ResNet(nn.Module):
    """ResNet with torchvision's module names.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: number of blocks in each of the four layers.
        num_classes: classifier outputs.
        groups: groups of the 3x3 convolutions in bottlenecks.
        width_per_group: inner width per group of bottlenecks (128 for Wide-ResNet-50-2).
    """

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        num_classes: int = NUM_CLASSES,
        groups: int = 1,
        width_per_group: int = BASE_WIDTH,
    ) -> None:
        super().__init__()
        if len(layers) != len(LAYER_PLANES) or any(n < 1 for n in layers):
            raise ValueError(
                f"expected {len(LAYER_PLANES)} positive block counts, received {list(layers)}"
            )
        self.groups = groups
        self.base_width = width_per_group
        self.inplanes = STEM_CHANNELS
        self.conv1 = nn.Conv2d(
            IN_CHANNELS,
            STEM_CHANNELS,
            kernel_size=STEM_KERNEL,
            stride=STEM_STRIDE,
            padding=STEM_KERNEL // 2,
            bias=False,
        )
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(
            kernel_size=POOL_KERNEL, stride=POOL_STRIDE, padding=POOL_KERNEL // 2
        )
        self.layer1 = self._make_layer(block, LAYER_PLANES[0], layers[0])
        self.layer2 = self._make_layer(block, LAYER_PLANES[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, LAYER_PLANES[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, LAYER_PLANES[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(LAYER_PLANES[3] * block.expansion, num_classes)
        #: Output channels of layer1-layer4.
        self.feature_channels: tuple[int, ...] = tuple(p * block.expansion for p in LAYER_PLANES)
        self._init_weights()

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        modules = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width)]
        self.inplanes = planes * block.expansion
        modules += [
            block(self.inplanes, planes, groups=self.groups, base_width=self.base_width)
            for _ in range(1, blocks)
        ]
        return nn.Sequential(*modules)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @staticmethod
    def _check_images(x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != IN_CHANNELS:
            raise ValueError(
                f"expected normalised images of shape (B, 3, H, W), received {tuple(x.shape)}"
            )

    def forward_features(self, x: Tensor, layers: Sequence[int] = (1, 2, 3)) -> list[Tensor]:
        """Outputs of the requested residual layers (default layer1-layer3, strides 4, 8, 16).

        Only the layers up to the deepest requested one are run.

        Args:
            x: normalised images (B, 3, H, W), float (see :func:`normalize`).
            layers: layer numbers from 1 to 4, in the order the maps should be returned.

        Returns:
            For layer ``l``: (B, ``feature_channels[l - 1]``, ~H / 2^(l+1), ~W / 2^(l+1)), dtype of
            ``x`` (e.g. 256 px Wide-ResNet-50-2: (B, 256, 64, 64), (B, 512, 32, 32),
            (B, 1024, 16, 16)).
        """
        self._check_images(x)
        layers = tuple(layers)
        valid = range(1, len(LAYER_PLANES) + 1)
        if not layers or any(layer not in valid for layer in layers):
            raise ValueError(
                f"expected a non-empty sequence of layer numbers in {list(valid)}, "
                f"received {layers}"
            )
        stages = (self.layer1, self.layer2, self.layer3, self.layer4)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        found: dict[int, Tensor] = {}
        for number, stage in enumerate(stages[: max(layers)], start=1):
            x = stage(x)
            found[number] = x
        return [found[layer] for layer in layers]

    def forward(self, x: Tensor) -> Tensor:
        """Normalised images (B, 3, H, W) -> ImageNet logits (B, num_classes), dtype of ``x``."""
        (x,) = self.forward_features(x, layers=(4,))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _build(
    block: Block,
    layers: Sequence[int],
    width_per_group: int,
    weights: Union[str, os.PathLike, None],
    imagenet_url: str,
    num_classes: int,
) -> ResNet:
    model = ResNet(block, layers, num_classes=num_classes, width_per_group=width_per_group)
    if weights is not None:
        load_checkpoint(model, imagenet_url if weights == IMAGENET else weights, strict=True)
    return model


def resnet18(
    weights: Union[str, os.PathLike, None] = None, *, num_classes: int = NUM_CLASSES
) -> ResNet:
    """ResNet-18 (BasicBlock, 2-2-2-2), optionally with a checkpoint loaded strictly.

    Args:
        weights: ``None`` (random initialisation), ``"imagenet"`` (torchvision's checkpoint
            :data:`RESNET18_IMAGENET_URL`, downloaded once through ``torch.hub``; needs a network
            connection), or a local path / http(s) URL of a checkpoint with torchvision key names.
        num_classes: classifier outputs (1000 to load ImageNet checkpoints).

    Returns:
        The model in training mode; feature channels 64, 128, 256, 512.
    """
    return _build(BasicBlock, (2, 2, 2, 2), BASE_WIDTH, weights, RESNET18_IMAGENET_URL, num_classes)


def wide_resnet50_2(
    weights: Union[str, os.PathLike, None] = None, *, num_classes: int = NUM_CLASSES
) -> ResNet:
    """Wide-ResNet-50-2 (Bottleneck, 3-4-6-3, inner width doubled), optionally with weights.

    Args:
        weights: ``None``, ``"imagenet"`` (torchvision's :data:`WIDE_RESNET50_2_IMAGENET_URL`,
            needs a network connection the first time), or a local path / http(s) URL.
        num_classes: classifier outputs (1000 to load ImageNet checkpoints).

    Returns:
        The model in training mode; feature channels 256, 512, 1024, 2048.
    """
    return _build(
        Bottleneck, (3, 4, 6, 3), 2 * BASE_WIDTH, weights, WIDE_RESNET50_2_IMAGENET_URL, num_classes
    )
