from __future__ import annotations

import urllib.error

import pytest
import torch
import torch.nn.functional as F

from arcad_harness.backbones.checkpoint import (
    CheckpointDownloadError,
    CheckpointError,
    load_checkpoint,
)
from arcad_harness.backbones.resnet import (
    INPUT_MEAN,
    INPUT_STD,
    RESNET18_IMAGENET_URL,
    WIDE_RESNET50_2_IMAGENET_URL,
    BasicBlock,
    Bottleneck,
    ResNet,
    normalize,
    resnet18,
    wide_resnet50_2,
)

# Facts about torchvision's ImageNet checkpoints (IMAGENET1K_V1): entries of the state dict
# (including BatchNorm's num_batches_tracked) and number of parameters from the model cards.
WRN50_2_ENTRIES = 320
WRN50_2_PARAMS = 68_883_240
RESNET18_ENTRIES = 122
RESNET18_PARAMS = 11_689_512


def _meta_state(build):
    with torch.device("meta"):
        model = build()
    return model, model.state_dict()


def test_wide_resnet50_2_matches_torchvision_checkpoint_layout():
    model, sd = _meta_state(wide_resnet50_2)
    assert len(sd) == WRN50_2_ENTRIES
    assert sum(p.numel() for p in model.parameters()) == WRN50_2_PARAMS
    expected = {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.num_batches_tracked": (),
        "layer1.0.conv1.weight": (128, 64, 1, 1),
        "layer1.0.conv2.weight": (128, 128, 3, 3),
        "layer1.0.conv3.weight": (256, 128, 1, 1),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.0.downsample.1.running_var": (256,),
        "layer2.0.downsample.0.weight": (512, 256, 1, 1),
        "layer3.5.bn3.running_mean": (1024,),
        "layer4.2.conv2.weight": (1024, 1024, 3, 3),
        "fc.weight": (1000, 2048),
        "fc.bias": (1000,),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert "layer1.1.downsample.0.weight" not in sd


def test_resnet18_matches_torchvision_checkpoint_layout():
    model, sd = _meta_state(resnet18)
    assert len(sd) == RESNET18_ENTRIES
    assert sum(p.numel() for p in model.parameters()) == RESNET18_PARAMS
    assert tuple(sd["layer1.1.conv2.weight"].shape) == (64, 64, 3, 3)
    assert tuple(sd["layer2.0.downsample.0.weight"].shape) == (128, 64, 1, 1)
    assert tuple(sd["fc.weight"].shape) == (1000, 512)
    assert not any(key.startswith("layer1.0.downsample") for key in sd)


def test_wide_resnet50_2_feature_shapes():
    with torch.device("meta"):
        model = wide_resnet50_2()
        features = model.forward_features(torch.empty(2, 3, 256, 256))
    assert [tuple(f.shape) for f in features] == [
        (2, 256, 64, 64),
        (2, 512, 32, 32),
        (2, 1024, 16, 16),
    ]
    assert model.feature_channels == (256, 512, 1024, 2048)


def test_resnet18_feature_shapes_and_logits():
    model = resnet18().eval()
    x = torch.randn(2, 3, 64, 64)
    features = model.forward_features(x)
    assert [tuple(f.shape) for f in features] == [(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4)]
    (layer4,) = model.forward_features(x, layers=(4,))
    assert tuple(layer4.shape) == (2, 512, 2, 2)
    assert tuple(model(x).shape) == (2, 1000)


def _bn(x, sd, prefix):
    return F.batch_norm(
        x,
        sd[f"{prefix}.running_mean"],
        sd[f"{prefix}.running_var"],
        sd[f"{prefix}.weight"],
        sd[f"{prefix}.bias"],
        training=False,
        eps=1e-5,
    )


def _reference_resnet(x, sd, bottleneck: bool):
    """torchvision ResNet written out from its state-dict keys (eval mode)."""
    x = F.relu(_bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), sd, "bn1"))
    x = F.max_pool2d(x, 3, 2, 1)
    outputs = []
    for layer in range(1, 5):
        index = 0
        while f"layer{layer}.{index}.conv1.weight" in sd:
            p = f"layer{layer}.{index}"
            stride = 2 if layer > 1 and index == 0 else 1
            if bottleneck:
                y = F.relu(_bn(F.conv2d(x, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
                y = F.conv2d(y, sd[f"{p}.conv2.weight"], stride=stride, padding=1)
                y = F.relu(_bn(y, sd, f"{p}.bn2"))
                y = _bn(F.conv2d(y, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
            else:
                y = F.conv2d(x, sd[f"{p}.conv1.weight"], stride=stride, padding=1)
                y = F.relu(_bn(y, sd, f"{p}.bn1"))
                y = _bn(F.conv2d(y, sd[f"{p}.conv2.weight"], padding=1), sd, f"{p}.bn2")
            if f"{p}.downsample.0.weight" in sd:
                x = F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride)
                x = _bn(x, sd, f"{p}.downsample.1")
            x = F.relu(x + y)
            index += 1
        outputs.append(x)
    logits = F.linear(x.mean((2, 3)), sd["fc.weight"], sd["fc.bias"])
    return outputs, logits


def _randomise_bn(model):
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.1)
            elif name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
        for name, param in model.named_parameters():
            if "bn" in name or "downsample.1" in name:
                offset = 1.0 if name.endswith("weight") else 0.0
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1 + offset)
    return model


@pytest.mark.parametrize(
    "build, bottleneck",
    [
        (lambda: ResNet(BasicBlock, (2, 1, 1, 1)), False),
        (lambda: ResNet(Bottleneck, (2, 1, 1, 1), width_per_group=128), True),
    ],
)
def test_matches_reference_transcription(build, bottleneck):
    torch.manual_seed(0)
    model = _randomise_bn(build()).eval()
    x = torch.randn(2, 3, 48, 48)
    sd = model.state_dict()
    ref_features, ref_logits = _reference_resnet(x, sd, bottleneck)
    with torch.no_grad():
        features = model.forward_features(x, layers=(1, 2, 3, 4))
        logits = model(x)
    for ours, ref in zip(features, ref_features):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)


def test_resnet18_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    source = _randomise_bn(resnet18()).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    target = resnet18(weights=path).eval()
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


def test_bottleneck_checkpoint_with_ddp_prefix_loads():
    source = ResNet(Bottleneck, (1, 1, 1, 1), width_per_group=128)
    sd = {f"module.{k}": v for k, v in source.state_dict().items()}
    target = ResNet(Bottleneck, (1, 1, 1, 1), width_per_group=128)
    load_checkpoint(target, sd)
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key


def test_resnet18_rejects_a_wide_resnet_checkpoint(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save(ResNet(Bottleneck, (1, 1, 1, 1)).state_dict(), path)
    with pytest.raises(CheckpointError, match="conv3"):
        resnet18(weights=path)


@pytest.mark.parametrize(
    "build, url",
    [(resnet18, RESNET18_IMAGENET_URL), (wide_resnet50_2, WIDE_RESNET50_2_IMAGENET_URL)],
)
def test_imagenet_weights_use_the_torchvision_url(monkeypatch, build, url):
    requested = []

    def offline(source, **kwargs):
        requested.append(source)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with torch.device("meta"), pytest.raises(CheckpointDownloadError, match="--weights PATH"):
        build(weights="imagenet")
    assert requested == [url]
    assert url.startswith("https://download.pytorch.org/models/")


def test_normalize():
    images = torch.rand(2, 3, 4, 4)
    out = normalize(images)
    for c in range(3):
        torch.testing.assert_close(out[:, c], (images[:, c] - INPUT_MEAN[c]) / INPUT_STD[c])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        normalize(torch.rand(2, 1, 4, 4))


def test_bad_inputs():
    model = ResNet(BasicBlock, (1, 1, 1, 1))
    with pytest.raises(ValueError, match="layer numbers"):
        model.forward_features(torch.randn(1, 3, 32, 32), layers=(0, 2))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="4 positive block counts"):
        ResNet(BasicBlock, (1, 1, 1))
    with pytest.raises(ValueError, match="groups=1"):
        BasicBlock(64, 64, base_width=128)
