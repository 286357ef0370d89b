"""RD4AD's one-class bottleneck embedding (OCBE) and reverse decoder, shared by RD4AD and ReContrast.

OCBE (Deng & Li, 2022): multi-scale feature fusion brings the stride-4 and stride-8 maps to stride 16 with 3x3
stride-2 convolutions (BN, ReLU), concatenates them with the stride-16 map, and a one-class embedding of residual
bottleneck blocks (the first one with stride ``embed_stride``) maps the result to ``D`` channels: the bottleneck
output ``z``, a (B, D, h, w) map. The reverse decoder mirrors the encoder: from ``z`` back to the three maps, each
stage starting with a block that upsamples by a transposed 2x2 convolution (when the resolution doubles).

:data:`LAYOUTS` gives the sizes per encoder: RD4AD's own for Wide-ResNet-50-2 (D 2048 at stride 32, 3 embedding
blocks, decoder stages of 3, 4, 6 blocks) and ResNet-18, and a CPU-sized layout for EfficientNet-Lite0 (D 256 at
stride 16, one block per stage, and a linear 1x1 output per level because its features are signed).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .backbones.resnet import Bottleneck

__all__ = ["LAYOUTS", "OCBE", "OCBELayout", "ReverseDecoder", "batch_statistics_from"]

#: Stride of the stride-16 encoder map relative to the stride-4 one (two stride-2 convolutions).
FUSION_STRIDE: int = 2
#: ``arcad_harness.backbones.resnet.Bottleneck`` widens by 4.
BOTTLENECK_EXPANSION: int = 4
#: Base width of a standard / wide ResNet bottleneck (inner width = planes * base_width / 64).
STANDARD_BASE_WIDTH: int = 64
WIDE_BASE_WIDTH: int = 128
#: Smallest inner width of a decoder block.
MIN_DECODER_WIDTH: int = 16


@dataclass(frozen=True)
class OCBELayout:
    """Sizes of an OCBE bottleneck and its reverse decoder.

    Attributes:
        dim: channels D of the bottleneck output (a multiple of 4).
        embed_stride: stride of the first embedding block (2: z at stride 32 as in RD4AD; 1: z at stride 16).
        embed_blocks: residual blocks of the one-class embedding.
        decoder_blocks: blocks of the decoder stages, deepest first (reconstructing strides 16, 8, 4).
        base_width: bottleneck base width (128 for the wide ResNet).
        linear_output: end each decoder stage with a 1x1 convolution. Needed when the encoder's features are
            signed (EfficientNet's blocks end in a linear projection), since a residual block ends in a ReLU; a
            ResNet's features are ReLU outputs, which RD4AD's decoder reproduces directly.
    """

    dim: int
    embed_stride: int
    embed_blocks: int
    decoder_blocks: tuple[int, int, int]
    base_width: int = STANDARD_BASE_WIDTH
    linear_output: bool = False


LAYOUTS: dict[str, OCBELayout] = {
    "wide_resnet50_2": OCBELayout(2048, 2, 3, (3, 4, 6), WIDE_BASE_WIDTH),
    "resnet18": OCBELayout(512, 2, 2, (2, 2, 2)),
    "efficientnet_lite0": OCBELayout(256, 1, 1, (1, 1, 1), linear_output=True),
}


def _reference_batch_norm(norm: nn.modules.batchnorm._BatchNorm, rows: Tensor, x: Tensor) -> Tensor:
    """``norm`` in training mode with the batch statistics of ``x[rows]`` only, applied to every row.

    The reference rows go through the module's own forward (their output, the running statistics and the
    counter are exactly those of a batch of these rows alone); the other rows are normalised with the same
    statistics, so they influence nothing of the reference rows' output.
    """
    if not norm.training:
        return type(norm).forward(norm, x)
    reference = x[rows]
    out_reference = type(norm).forward(norm, reference)
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    mean = reference.mean(dim=dims).view(shape)
    var = reference.var(dim=dims, unbiased=False).view(shape)
    out = (x - mean) * torch.rsqrt(var + norm.eps)
    if norm.affine:
        out = out * norm.weight.view(shape) + norm.bias.view(shape)
    return out.index_copy(0, rows, out_reference)


@contextmanager
def batch_statistics_from(module: nn.Module, rows: Tensor | None) -> Iterator[None]:
    """Within the block, every BatchNorm of ``module`` in training mode takes its batch statistics (and updates
    its running statistics) from the rows ``rows`` (int64 (M,)) of its input only, and normalises every row with
    them: the bottleneck sees every image, while its statistics, hence the normal images' ``z`` and everything
    the decoder does with them, come from the normal images alone. ``None`` or no row: the usual whole-batch
    statistics."""
    if rows is None or rows.numel() == 0:
        yield
        return
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.forward = functools.partial(_reference_batch_norm, norm, rows)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for norm in norms:
            del norm.forward


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _bottleneck(in_channels: int, out_channels: int, stride: int, base_width: int) -> Bottleneck:
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
        )
    return Bottleneck(in_channels, out_channels // BOTTLENECK_EXPANSION, stride, downsample, base_width=base_width)


class OCBE(nn.Module):
    """Multi-scale fusion + one-class embedding: three maps -> z (B, D, h, w).

    Args:
        channels: channels of the stride-4, 8, 16 encoder maps.
        layout: sizes (see :class:`OCBELayout`); ``layout.dim`` must be a multiple of 4.
    """

    def __init__(self, channels: Sequence[int], layout: OCBELayout) -> None:
        super().__init__()
        c1, c2, c3 = channels
        if layout.dim % BOTTLENECK_EXPANSION:
            raise ValueError(f"the bottleneck width D must be a multiple of 4, got {layout.dim}")
        self.fuse1 = nn.Sequential(_conv_bn_relu(c1, c2, FUSION_STRIDE), _conv_bn_relu(c2, c3, FUSION_STRIDE))
        self.fuse2 = _conv_bn_relu(c2, c3, FUSION_STRIDE)
        blocks = [_bottleneck(3 * c3, layout.dim, layout.embed_stride, layout.base_width)]
        blocks += [_bottleneck(layout.dim, layout.dim, 1, layout.base_width) for _ in range(layout.embed_blocks - 1)]
        self.embed = nn.Sequential(*blocks)
        self.dim = layout.dim

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Maps (B, C_1, 4h', 4w'), (B, C_2, 2h', 2w'), (B, C_3, h', w') -> z (B, D, h' / s, w' / s)."""
        f1, f2, f3 = features
        fused = [self.fuse1(f1), self.fuse2(f2), f3]
        target = f3.shape[-2:]
        if any(f.shape[-2:] != target for f in fused):
            raise ValueError(
                "the encoder maps must have sizes 4x, 2x and 1x the stride-16 map; got "
                + ", ".join(str(tuple(f.shape[-2:])) for f in features)
                + " (use an image side divisible by 16)"
            )
        return self.embed(torch.cat(fused, dim=1))


class DecoderBlock(nn.Module):
    """RD4AD's de-bottleneck: 1x1 reduce, a transposed 2x2 stride-2 convolution (or a 3x3 one when the
    resolution is kept), 1x1 expand, with a residual branch of the same kind.

    Args:
        in_channels, out_channels: channels in and out.
        upsample: double the resolution.
    """

    def __init__(self, in_channels: int, out_channels: int, upsample: bool) -> None:
        super().__init__()
        width = max(out_channels // 2, MIN_DECODER_WIDTH)
        if upsample:
            middle: nn.Module = nn.ConvTranspose2d(width, width, 2, stride=2, bias=False)
            shortcut: nn.Module = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2, bias=False)
        else:
            middle = nn.Conv2d(width, width, 3, padding=1, bias=False)
            shortcut = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            middle,
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = nn.Sequential(shortcut, nn.BatchNorm2d(out_channels))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, h, w) -> (B, C_out, 2h, 2w) (upsampling) or (B, C_out, h, w)."""
        return self.relu(self.body(x) + self.shortcut(x))


class ReverseDecoder(nn.Module):
    """From z back to the encoder's three maps, deepest first, optionally with several output heads.

    Args:
        dim: channels D of z.
        channels: channels of the stride-4, 8, 16 encoder maps.
        layout: sizes (see :class:`OCBELayout`); ``embed_stride`` 2 makes the first stage upsample.
        heads: output heads. 1: the stages' outputs are the reconstructions (RD4AD; through a 1x1 convolution
            with ``layout.linear_output``). 2 (ReContrast): each stage output passes through one 1x1 convolution
            per head, giving ``3 * heads`` maps.
    """

    def __init__(self, dim: int, channels: Sequence[int], layout: OCBELayout, heads: int = 1) -> None:
        super().__init__()
        if heads < 1:
            raise ValueError(f"heads must be >= 1, got {heads}")
        targets = list(channels)[::-1]  # stride 16, 8, 4
        stages = []
        in_channels = dim
        for index, (out_channels, blocks) in enumerate(zip(targets, layout.decoder_blocks)):
            upsample = index > 0 or layout.embed_stride > 1
            modules = [DecoderBlock(in_channels, out_channels, upsample)]
            modules += [_bottleneck(out_channels, out_channels, 1, STANDARD_BASE_WIDTH) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*modules))
            in_channels = out_channels
        self.stages = nn.ModuleList(stages)
        self.num_heads = heads
        self.heads: nn.ModuleList | None = None
        if heads > 1 or layout.linear_output:
            self.heads = nn.ModuleList(
                nn.ModuleList(nn.Conv2d(c, c, 1) for c in targets[::-1]) for _ in range(heads)
            )

    def forward(self, z: Tensor) -> list[Tensor]:
        """z (B, D, h, w) -> reconstructions of the stride-4, 8, 16 maps, for each head in turn:
        ``[head_0 (s4, s8, s16), head_1 (s4, s8, s16), ...]``."""
        outputs = []
        x = z
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        levels = outputs[::-1]  # stride 4, 8, 16
        if self.heads is None:
            return levels
        return [conv(level) for head in self.heads for conv, level in zip(head, levels)]
