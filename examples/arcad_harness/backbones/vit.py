"""DINOv2 Vision Transformers with register tokens, key-compatible with the official checkpoints.

Architecture (as released with "Vision Transformers Need Registers"): a 14x14 patch embedding,
a class token, 4 register tokens, learned position embeddings for the 518 px pretraining size
(a 37x37 patch grid, ``pos_embed`` of shape (1, 1 + 37 * 37, D)), pre-norm blocks with LayerNorm
(eps 1e-6), multi-head self-attention, a GELU MLP of ratio 4 and layer-scale on both branches,
then a final LayerNorm. State-dict keys::

    cls_token, register_tokens, pos_embed, mask_token, patch_embed.proj.{weight,bias},
    blocks.{i}.norm1.*, blocks.{i}.attn.qkv.*, blocks.{i}.attn.proj.*, blocks.{i}.ls1.gamma,
    blocks.{i}.norm2.*, blocks.{i}.mlp.fc1.*, blocks.{i}.mlp.fc2.*, blocks.{i}.ls2.gamma, norm.*

Token layout of every block output: ``[cls, reg_1 .. reg_R, patch_1 .. patch_N]`` with the patches
in row-major order. The class token receives its position embedding, the registers receive none
(they are inserted after the position embeddings are added). For other input sizes the patch
position embeddings are resized bicubically (with antialiasing, to the exact grid size, as the
official register models do); at the 37x37 grid they are used unchanged.

Inputs are RGB images in [0, 1] standardised with the ImageNet mean/std (:func:`normalize`),
with height and width multiples of the patch size (e.g. 392 px -> a 28x28 grid, 784 patches).
"""

from __future__ import annotations

import os
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import load_checkpoint
from .resnet import INPUT_MEAN, INPUT_STD, normalize

__all__ = [
    "DINOMALY_LAYERS",
    "DINOV2_VITB14_REG_URL",
    "DINOV2_VITS14_REG_URL",
    "INPUT_MEAN",
    "INPUT_STD",
    "Attention",
    "Block",
    "LayerScale",
    "Mlp",
    "PatchEmbed",
    "VisionTransformer",
    "dinov2_vitb14_reg",
    "dinov2_vits14_reg",
    "normalize",
]

#: Official DINOv2 checkpoints with 4 registers (pretrained on LVD-142M).
DINOV2_VITS14_REG_URL: str = (
    "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth"
)
DINOV2_VITB14_REG_URL: str = (
    "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth"
)
#: The value of ``weights`` that selects the official DINOv2 checkpoint (named after its data set).
PRETRAINED: str = "lvd142m"

#: DINOv2 patch size and pretraining resolution (a 37x37 patch grid).
PATCH_SIZE: int = 14
PRETRAIN_IMG_SIZE: int = 518
#: Register tokens of the released "reg" models.
NUM_REGISTERS: int = 4
#: LayerNorm epsilon, MLP expansion and layer-scale initial value of DINOv2.
LN_EPS: float = 1e-6
MLP_RATIO: float = 4.0
LAYER_SCALE_INIT: float = 1.0
#: Standard deviations used for random initialisation (truncated at +-2 std).
INIT_STD: float = 0.02
TOKEN_INIT_STD: float = 1e-6
#: Blocks whose outputs Dinomaly reconstructs with ViT-B (0-based block indices).
DINOMALY_LAYERS: tuple[int, ...] = tuple(range(2, 10))
#: Channels expected in the input images.
IN_CHANNELS: int = 3


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: (B, 3, H, W) -> (B, H/p * W/p, D), row-major."""

    def __init__(self, patch_size: int, embed_dim: int, in_channels: int = IN_CHANNELS) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) with H, W multiples of ``patch_size`` -> (B, N, D)."""
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (scaled dot-product attention)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"expected dim divisible by num_heads, received {dim} and {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, D)."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    """Linear -> GELU -> Linear: (B, N, D) -> (B, N, D)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, D)."""
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel learned scale ``gamma`` (D,): (..., D) -> (..., D)."""

    def __init__(self, dim: int, init_value: float = LAYER_SCALE_INIT) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        """(..., D) -> (..., D)."""
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = MLP_RATIO,
        qkv_bias: bool = True,
        layer_scale_init: float = LAYER_SCALE_INIT,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.ls1 = LayerScale(dim, layer_scale_init)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, layer_scale_init)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, D)."""
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """DINOv2-style ViT with optional register tokens.

    Args:
        img_size: training resolution; the position embeddings cover ``img_size / patch_size``
            squared patches (518 / 14 = 37 for DINOv2).
        patch_size: patch side in pixels.
        embed_dim: token width D.
        depth: number of blocks.
        num_heads: attention heads (D must be divisible by it).
        mlp_ratio: hidden width of the MLP relative to D.
        num_register_tokens: register tokens R (0 for none; no ``register_tokens`` key then).
        layer_scale_init: initial layer-scale value.
        interpolate_antialias: antialias the bicubic resize of the position embeddings.
        interpolate_offset: if non-zero, resize with scale factor ``(grid + offset) / native``
            (the trick of the original DINOv2 models); if zero, resize to the exact grid.
        qkv_bias: bias in the ``qkv`` projection.
    """

    def __init__(
        self,
        img_size: int = PRETRAIN_IMG_SIZE,
        patch_size: int = PATCH_SIZE,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = MLP_RATIO,
        num_register_tokens: int = NUM_REGISTERS,
        layer_scale_init: float = LAYER_SCALE_INIT,
        interpolate_antialias: bool = True,
        interpolate_offset: float = 0.0,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(
                f"expected img_size to be a multiple of patch_size {patch_size}, "
                f"received {img_size}"
            )
        if num_register_tokens < 0:
            raise ValueError(f"expected num_register_tokens >= 0, received {num_register_tokens}")
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.native_grid = img_size // patch_size
        self.num_register_tokens = num_register_tokens
        #: Tokens before the patches: the class token and the registers.
        self.num_prefix_tokens = 1 + num_register_tokens
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = interpolate_offset

        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.native_grid**2, embed_dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
            if num_register_tokens
            else None
        )
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, layer_scale_init) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)
        nn.init.normal_(self.cls_token, std=TOKEN_INIT_STD)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=TOKEN_INIT_STD)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def depth(self) -> int:
        """Number of transformer blocks."""
        return len(self.blocks)

    def patch_grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid (rows, columns) for an input of ``height x width`` pixels.

        Raises:
            ValueError: a side is not a positive multiple of the patch size.
        """
        if height % self.patch_size or width % self.patch_size or height <= 0 or width <= 0:
            raise ValueError(
                f"expected image height and width to be positive multiples of the patch size "
                f"{self.patch_size}, received {height}x{width}"
            )
        return height // self.patch_size, width // self.patch_size

    def interpolate_pos_encoding(self, grid_h: int, grid_w: int) -> Tensor:
        """Position embeddings for a ``grid_h x grid_w`` patch grid.

        Returns:
            (1, 1 + grid_h * grid_w, D) in the dtype of ``pos_embed``: the class token's
            embedding followed by the bicubically resized patch embeddings (row-major). At the
            native grid this is ``pos_embed`` itself.
        """
        native = self.native_grid
        if (grid_h, grid_w) == (native, native):
            return self.pos_embed
        dim = self.pos_embed.shape[-1]
        cls_pos = self.pos_embed[:, :1]
        patch_pos = self.pos_embed[:, 1:].float().reshape(1, native, native, dim)
        patch_pos = patch_pos.permute(0, 3, 1, 2)
        if self.interpolate_offset:
            scale = (
                (grid_h + self.interpolate_offset) / native,
                (grid_w + self.interpolate_offset) / native,
            )
            patch_pos = F.interpolate(
                patch_pos, scale_factor=scale, mode="bicubic", antialias=self.interpolate_antialias
            )
        else:
            patch_pos = F.interpolate(
                patch_pos,
                size=(grid_h, grid_w),
                mode="bicubic",
                antialias=self.interpolate_antialias,
            )
        if patch_pos.shape[-2:] != (grid_h, grid_w):
            raise ValueError(
                f"position-embedding resize produced a {tuple(patch_pos.shape[-2:])} grid, "
                f"expected {(grid_h, grid_w)}; use interpolate_offset=0"
            )
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
        return torch.cat((cls_pos, patch_pos.to(self.pos_embed.dtype)), dim=1)

    def prepare_tokens(self, x: Tensor, masks: Tensor | None = None) -> Tensor:
        """Embed images into the token sequence fed to the first block.

        Args:
            x: normalised images (B, 3, H, W), H and W multiples of the patch size.
            masks: optional bool (B, N) marking patches replaced by ``mask_token`` (as in
                DINOv2's masked training); ``None`` for plain inference.

        Returns:
            (B, 1 + R + N, D), dtype of ``x``: ``[cls + pos, registers, patches + pos]``.
        """
        if x.ndim != 4 or x.shape[1] != IN_CHANNELS:
            raise ValueError(
                f"expected normalised images of shape (B, 3, H, W), received {tuple(x.shape)}"
            )
        grid_h, grid_w = self.patch_grid(x.shape[-2], x.shape[-1])
        tokens = self.patch_embed(x)
        if masks is not None:
            if masks.shape != tokens.shape[:2]:
                raise ValueError(
                    f"expected masks of shape {tuple(tokens.shape[:2])}, "
                    f"received {tuple(masks.shape)}"
                )
            tokens = torch.where(masks.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        batch = tokens.shape[0]
        tokens = torch.cat((self.cls_token.expand(batch, -1, -1).to(tokens.dtype), tokens), dim=1)
        tokens = tokens + self.interpolate_pos_encoding(grid_h, grid_w).to(tokens.dtype)
        if self.register_tokens is not None:
            registers = self.register_tokens.expand(batch, -1, -1).to(tokens.dtype)
            tokens = torch.cat((tokens[:, :1], registers, tokens[:, 1:]), dim=1)
        return tokens

    def forward_intermediates(
        self, x: Tensor, layers: Sequence[int] = DINOMALY_LAYERS, *, norm: bool = False
    ) -> list[Tensor]:
        """Outputs of the requested blocks (0-based), e.g. Dinomaly's blocks 2-9 of ViT-B.

        Only the blocks up to the deepest requested one are run.

        Args:
            x: normalised images (B, 3, H, W), H and W multiples of the patch size.
            layers: block indices in ``[0, depth)``, in the order the outputs should be returned.
            norm: apply the final LayerNorm to each returned output.

        Returns:
            One (B, 1 + R + N, D) tensor per entry of ``layers``, dtype of ``x``; tokens are
            ``[cls, registers, patches]`` (use ``[:, model.num_prefix_tokens:]`` for the patches).
        """
        layers = tuple(layers)
        if not layers or any(not 0 <= layer < self.depth for layer in layers):
            raise ValueError(
                f"expected a non-empty sequence of block indices in [0, {self.depth}), "
                f"received {layers}"
            )
        wanted = set(layers)
        found: dict[int, Tensor] = {}
        tokens = self.prepare_tokens(x)
        for index, block in enumerate(self.blocks[: max(layers) + 1]):
            tokens = block(tokens)
            if index in wanted:
                found[index] = self.norm(tokens) if norm else tokens
        return [found[layer] for layer in layers]

    def forward_features(self, x: Tensor) -> Tensor:
        """All blocks then the final LayerNorm: (B, 3, H, W) -> (B, 1 + R + N, D)."""
        tokens = self.prepare_tokens(x)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward(self, x: Tensor) -> Tensor:
        """Normalised class token: (B, 3, H, W) -> (B, D), dtype of ``x``."""
        return self.forward_features(x)[:, 0]


def _dinov2_reg(
    embed_dim: int, num_heads: int, weights: Union[str, os.PathLike, None], url: str
) -> VisionTransformer:
    model = VisionTransformer(
        img_size=PRETRAIN_IMG_SIZE,
        patch_size=PATCH_SIZE,
        embed_dim=embed_dim,
        depth=12,
        num_heads=num_heads,
        num_register_tokens=NUM_REGISTERS,
        interpolate_antialias=True,
        interpolate_offset=0.0,
    )
    if weights is not None:
        load_checkpoint(model, url if weights == PRETRAINED else weights, strict=True)
    return model


def dinov2_vits14_reg(weights: Union[str, os.PathLike, None] = None) -> VisionTransformer:
    """DINOv2 ViT-S/14 with 4 registers (D 384, 12 blocks, 6 heads, 22M parameters).

    Args:
        weights: ``None`` (random initialisation), ``"lvd142m"`` (the official checkpoint
            :data:`DINOV2_VITS14_REG_URL`, downloaded once through ``torch.hub``; needs a network
            connection), or a local path / http(s) URL of a checkpoint with the official key names.

    Returns:
        The model in training mode (call ``.eval()`` for a frozen encoder).
    """
    return _dinov2_reg(384, 6, weights, DINOV2_VITS14_REG_URL)


def dinov2_vitb14_reg(weights: Union[str, os.PathLike, None] = None) -> VisionTransformer:
    """DINOv2 ViT-B/14 with 4 registers (D 768, 12 blocks, 12 heads, 86M parameters).

    Args:
        weights: ``None``, ``"lvd142m"`` (official :data:`DINOV2_VITB14_REG_URL`, needs a network
            connection the first time), or a local path / http(s) URL.

    Returns:
        The model in training mode (call ``.eval()`` for a frozen encoder).
    """
    return _dinov2_reg(768, 12, weights, DINOV2_VITB14_REG_URL)
