"""Dinomaly's bottleneck and decoder parts (Guo et al., 2025): a noisy MLP bottleneck and transformer blocks with
linear attention.

* :class:`NoisyBottleneck`: ``dropout -> Linear(D, H) -> GELU -> dropout -> Linear(H, D) -> dropout`` with dropout
  0.2; the dropout on the input is what makes it "noisy" (it keeps the decoder from learning the identity).
* :class:`LinearAttention`: softmax-free attention with the ``elu + 1`` feature map,
  ``out_i = phi(q_i) (sum_j phi(k_j) v_j^T) / (phi(q_i) . sum_j phi(k_j))``; it cannot focus on single tokens,
  which again discourages identity mapping. Linear in the number of tokens.
* :class:`DecoderBlock`: pre-norm block ``x + attn(norm(x))``, ``x + mlp(norm(x))``, LayerNorm eps 1e-8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DecoderBlock", "LinearAttention", "NoisyBottleneck", "init_linear"]

#: Dinomaly's dropout in the bottleneck MLP.
BOTTLENECK_DROPOUT: float = 0.2
#: Hidden width of the MLPs relative to D.
MLP_RATIO: int = 4
#: LayerNorm epsilon of Dinomaly's decoder blocks.
LN_EPS: float = 1e-8
#: Standard deviation of the truncated normal initialisation of linear layers (ViT convention).
INIT_STD: float = 0.02


def init_linear(module: nn.Module) -> None:
    """ViT initialisation: linear weights truncated normal (std 0.02), biases 0, LayerNorm weight 1, bias 0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class NoisyBottleneck(nn.Module):
    """Dinomaly's bottleneck MLP with dropout on its input, hidden layer and output.

    Args:
        dim: token width D.
        hidden_dim: hidden width (Dinomaly: 4 D).
        dropout: dropout probability (Dinomaly: 0.2).
    """

    def __init__(self, dim: int, hidden_dim: int, dropout: float = BOTTLENECK_DROPOUT) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, D)."""
        x = self.fc1(self.drop(x))
        x = self.drop(F.gelu(x))
        return self.drop(self.fc2(x))


class LinearAttention(nn.Module):
    """Multi-head linear attention with the ``elu(x) + 1`` feature map (Dinomaly's decoder attention).

    Args:
        dim: token width D (divisible by ``num_heads``).
        num_heads: attention heads.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim must be divisible by num_heads, got dim={dim}, num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, D)."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, d)
        q, k = F.elu(q) + 1.0, F.elu(k) + 1.0
        kv = torch.einsum("bhnd,bhne->bhde", k, v)  # sum over tokens of phi(k) v^T
        normaliser = torch.einsum("bhnd,bhd->bhn", q, k.sum(dim=2))
        out = torch.einsum("bhnd,bhde->bhne", q, kv) / normaliser.unsqueeze(-1)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class DecoderBlock(nn.Module):
    """Pre-norm transformer block with linear attention and a GELU MLP.

    Args:
        dim: token width D.
        num_heads: attention heads.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = LinearAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = nn.Sequential(nn.Linear(dim, MLP_RATIO * dim), nn.GELU(), nn.Linear(MLP_RATIO * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, D)."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))
