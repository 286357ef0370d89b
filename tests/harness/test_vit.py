from __future__ import annotations

import math
import urllib.error

import pytest
import torch

from arcad_harness.backbones.checkpoint import (
    CheckpointDownloadError,
    CheckpointError,
    load_checkpoint,
)
from arcad_harness.backbones.vit import (
    DINOMALY_LAYERS,
    DINOV2_VITB14_REG_URL,
    DINOV2_VITS14_REG_URL,
    Block,
    VisionTransformer,
    dinov2_vitb14_reg,
    dinov2_vits14_reg,
)

# Facts about the official DINOv2 register checkpoints (dinov2_vit{s,b}14_reg4_pretrain.pth):
# 12 blocks, 4 registers, a 37x37 position grid for 518 px, MLP ratio 4.
DEPTH = 12
REGISTERS = 4
GRID = 37


def _expected_official_shapes(dim: int) -> dict[str, tuple[int, ...]]:
    shapes = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, 1 + GRID * GRID, dim),
        "register_tokens": (1, REGISTERS, dim),
        "mask_token": (1, dim),
        "patch_embed.proj.weight": (dim, 3, 14, 14),
        "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,),
        "norm.bias": (dim,),
    }
    for i in range(DEPTH):
        p = f"blocks.{i}"
        shapes.update(
            {
                f"{p}.norm1.weight": (dim,),
                f"{p}.norm1.bias": (dim,),
                f"{p}.attn.qkv.weight": (3 * dim, dim),
                f"{p}.attn.qkv.bias": (3 * dim,),
                f"{p}.attn.proj.weight": (dim, dim),
                f"{p}.attn.proj.bias": (dim,),
                f"{p}.ls1.gamma": (dim,),
                f"{p}.norm2.weight": (dim,),
                f"{p}.norm2.bias": (dim,),
                f"{p}.mlp.fc1.weight": (4 * dim, dim),
                f"{p}.mlp.fc1.bias": (4 * dim,),
                f"{p}.mlp.fc2.weight": (dim, 4 * dim),
                f"{p}.mlp.fc2.bias": (dim,),
                f"{p}.ls2.gamma": (dim,),
            }
        )
    return shapes


@pytest.mark.parametrize("build, dim", [(dinov2_vitb14_reg, 768), (dinov2_vits14_reg, 384)])
def test_official_checkpoint_layout(build, dim):
    with torch.device("meta"):
        model = build()
    got = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    expected = _expected_official_shapes(dim)
    assert len(got) == 176
    assert got == expected


def test_vitb14_reg_tokens_for_dinomaly_crop():
    with torch.device("meta"):
        model = dinov2_vitb14_reg()
        outputs = model.forward_intermediates(torch.empty(2, 3, 392, 392))
    assert len(outputs) == len(DINOMALY_LAYERS) == 8
    assert all(tuple(o.shape) == (2, 1 + 4 + 28 * 28, 768) for o in outputs)


def tiny(**overrides) -> VisionTransformer:
    config = dict(
        img_size=28, patch_size=7, embed_dim=16, depth=3, num_heads=2, num_register_tokens=2
    )
    config.update(overrides)
    return VisionTransformer(**config)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    source = tiny().eval()
    with torch.no_grad():
        for param in source.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    path = tmp_path / "vit.pth"
    torch.save({"model": source.state_dict()}, path)
    torch.manual_seed(1)
    target = tiny().eval()
    assert load_checkpoint(target, path).ok
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(source.forward_features(x), target.forward_features(x))


def test_checkpoint_without_registers_is_rejected(tmp_path):
    path = tmp_path / "noreg.pth"
    torch.save(tiny(num_register_tokens=0).state_dict(), path)
    with pytest.raises(CheckpointError, match="register_tokens"):
        load_checkpoint(tiny(), path)


def test_position_embedding_identity_at_native_grid():
    model = tiny()
    assert model.interpolate_pos_encoding(4, 4) is model.pos_embed


@pytest.mark.parametrize("offset", [0.0, 0.1])
@pytest.mark.parametrize("grid", [(3, 5), (6, 6), (8, 2)])
def test_position_embedding_resize_shapes_and_constants(grid, offset):
    model = tiny(interpolate_offset=offset)
    with torch.no_grad():
        model.pos_embed.copy_(torch.randn(1, 1, 16).expand(1, 17, 16))
        model.pos_embed[:, 0] = 3.0
    resized = model.interpolate_pos_encoding(*grid)
    assert resized.shape == (1, 1 + grid[0] * grid[1], 16)
    # The class token's embedding is untouched; a constant field stays constant.
    assert torch.equal(resized[:, 0], model.pos_embed[:, 0])
    torch.testing.assert_close(resized[:, 1:], model.pos_embed[:, 1:2].expand_as(resized[:, 1:]))


def test_position_embedding_resize_is_row_major():
    # A field that grows down the rows only must stay constant along each resized row.
    model = tiny()
    rows = torch.arange(4.0).repeat_interleave(4)
    with torch.no_grad():
        model.pos_embed[0, 1:] = rows[:, None].expand(16, 16)
    resized = model.interpolate_pos_encoding(6, 3)[0, 1:, 0].reshape(6, 3)
    torch.testing.assert_close(resized, resized[:, :1].expand(6, 3))
    assert (resized[1:, 0] >= resized[:-1, 0]).all()


def test_token_layout():
    torch.manual_seed(0)
    model = tiny()
    x = torch.randn(2, 3, 35, 21)  # a 5x3 patch grid
    tokens = model.prepare_tokens(x)
    assert tokens.shape == (2, 1 + 2 + 15, 16)
    pos = model.interpolate_pos_encoding(5, 3)
    torch.testing.assert_close(tokens[:, 0], (model.cls_token + pos[:, :1])[:, 0].expand(2, -1))
    torch.testing.assert_close(tokens[:, 1:3], model.register_tokens.expand(2, -1, -1))
    patches = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(tokens[:, 3:], patches + pos[:, 1:])


def test_masked_patches_use_mask_token():
    model = tiny()
    with torch.no_grad():
        model.mask_token.fill_(5.0)
    masks = torch.zeros(1, 16, dtype=torch.bool)
    masks[0, 3] = True
    tokens = model.prepare_tokens(torch.randn(1, 3, 28, 28), masks=masks)
    prefix = model.num_prefix_tokens
    torch.testing.assert_close(tokens[0, prefix + 3], 5.0 + model.pos_embed[0, 1 + 3])


def _reference_block(block: Block, x: torch.Tensor, heads: int) -> torch.Tensor:
    """Pre-norm ViT block written out with explicit softmax attention."""
    b, n, d = x.shape
    hd = d // heads
    h = torch.nn.functional.layer_norm(x, (d,), block.norm1.weight, block.norm1.bias, 1e-6)
    qkv = h @ block.attn.qkv.weight.T + block.attn.qkv.bias
    q, k, v = qkv.split(d, dim=-1)
    q, k, v = (t.reshape(b, n, heads, hd).transpose(1, 2) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
    attended = (weights @ v).transpose(1, 2).reshape(b, n, d)
    x = x + block.ls1.gamma * (attended @ block.attn.proj.weight.T + block.attn.proj.bias)
    h = torch.nn.functional.layer_norm(x, (d,), block.norm2.weight, block.norm2.bias, 1e-6)
    hidden = torch.nn.functional.gelu(h @ block.mlp.fc1.weight.T + block.mlp.fc1.bias)
    return x + block.ls2.gamma * (hidden @ block.mlp.fc2.weight.T + block.mlp.fc2.bias)


def test_block_matches_reference():
    torch.manual_seed(0)
    block = Block(16, num_heads=4, layer_scale_init=0.5)
    with torch.no_grad():
        for param in block.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(block(x), _reference_block(block, x, 4), rtol=1e-5, atol=1e-5)


def test_forward_intermediates():
    torch.manual_seed(0)
    model = tiny().eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        second, first = model.forward_intermediates(x, layers=(2, 0))
        normed = model.forward_intermediates(x, layers=(2,), norm=True)[0]
        tokens = model.prepare_tokens(x)
        reference = []
        for block in model.blocks:
            tokens = block(tokens)
            reference.append(tokens)
        features = model.forward_features(x)
        cls = model(x)
    assert first.shape == second.shape == (2, 1 + 2 + 16, 16)
    torch.testing.assert_close(first, reference[0])
    torch.testing.assert_close(second, reference[2])
    torch.testing.assert_close(normed, model.norm(reference[2]))
    torch.testing.assert_close(features, normed)
    torch.testing.assert_close(cls, features[:, 0])


@pytest.mark.parametrize(
    "build, url",
    [(dinov2_vitb14_reg, DINOV2_VITB14_REG_URL), (dinov2_vits14_reg, DINOV2_VITS14_REG_URL)],
)
def test_pretrained_weights_use_the_official_url(monkeypatch, build, url):
    requested = []

    def offline(source, **kwargs):
        requested.append(source)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with torch.device("meta"), pytest.raises(CheckpointDownloadError, match="--weights PATH"):
        build(weights="lvd142m")
    assert requested == [url]
    assert url.startswith("https://dl.fbaipublicfiles.com/dinov2/")
    assert url.endswith("_reg4_pretrain.pth")


def test_bad_inputs():
    model = tiny()
    with pytest.raises(ValueError, match="multiples of the patch size 7"):
        model(torch.randn(1, 3, 30, 28))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        model.forward_intermediates(torch.randn(1, 3, 28, 28), layers=(1, 3))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(3, 28, 28))
    with pytest.raises(ValueError, match="divisible"):
        tiny(num_heads=3)
    with pytest.raises(ValueError, match="masks of shape"):
        model.prepare_tokens(torch.randn(1, 3, 28, 28), masks=torch.zeros(1, 5, dtype=torch.bool))
