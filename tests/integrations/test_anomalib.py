"""ArcAD in anomalib 2.7.0: the real ReverseDistillation and Dinomaly, with random backbone weights, on generated data.

Small on purpose (64 px images, ResNet-18 for RD4AD, ViT-S/14 with 4 x 4 patches for Dinomaly, a few steps), so
that the whole file runs in a few minutes on two CPU cores.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from anomalib.data import ImageBatch
from anomalib.engine import Engine
from anomalib.models import Dinomaly
from anomalib.pre_processing import PreProcessor
from lightning.pytorch import Callback
from torchvision.transforms.v2 import Compose, Normalize, Resize

from torch_arcad.coldstart import make_split
from torch_arcad.integrations.anomalib import (
    RANDOM_WEIGHTS,
    ArcADDinomaly,
    ArcADReverseDistillation,
    BackboneWeightsError,
    ColdStartFolder,
    ColdStartMVTecAD,
    DefectBatchSampler,
    SteppedDinomaly,
    timm_weights,
)

CATEGORY = "widget"
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
DINO_ENCODER = "vit_small_patch14_reg4_dinov2"


def pre_processor(size: int) -> PreProcessor:
    return PreProcessor(transform=Compose([Resize((size, size)), Normalize(**IMAGENET)]))


def rd_model(**kwargs) -> ArcADReverseDistillation:
    options = {"backbone": "resnet18", "pre_processor": pre_processor(64), "num_prototypes": 2,
               "backbone_weights": RANDOM_WEIGHTS, "visualizer": False}
    return ArcADReverseDistillation(**{**options, **kwargs})


def dinomaly_model(cls=ArcADDinomaly, **kwargs):
    options = {"encoder_name": DINO_ENCODER, "pre_processor": pre_processor(56), "backbone_weights": RANDOM_WEIGHTS,
               "visualizer": False}
    if cls is ArcADDinomaly:
        options["num_prototypes"] = 2
    return cls(**{**options, **kwargs})


def datamodule(root: Path, **kwargs) -> ColdStartMVTecAD:
    options = {"root": root, "category": CATEGORY, "train_batch_size": 4, "eval_batch_size": 8, "num_workers": 0}
    return ColdStartMVTecAD(**{**options, **kwargs})


def engine(tmp: Path, max_steps: int, **kwargs) -> Engine:
    return Engine(accelerator="cpu", devices=1, max_steps=max_steps, default_root_dir=tmp, logger=False,
                  enable_progress_bar=False, **kwargs)


def training_batch(root: Path, model) -> ImageBatch:
    """A pre-processed training batch holding a defective image (the model's pre-processor applied)."""
    dm = datamodule(root, defects_per_batch=1)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    batch.image, batch.gt_mask = model.pre_processor.transform(batch.image, batch.gt_mask)
    assert batch.gt_label.sum() == 1
    return batch


def logged_step(model, batch) -> dict[str, float]:
    logged: dict[str, float] = {}
    model.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value.detach()))
    out = model.training_step(batch)
    logged["loss"] = float(out["loss"].detach())
    return logged


# ------------------------------------------------------------------------------------------------- data module


def test_datamodule_follows_the_cold_start_split(mvtec_root):
    split = make_split(mvtec_root, categories=[CATEGORY])
    entry = split["categories"][CATEGORY]
    dm = datamodule(mvtec_root)
    dm.setup("fit")
    train, test = dm.train_data.samples, dm.test_data.samples
    # 30% of 20 train/good, plus enough defects to make 10% of training; the rest (and all test images) to test
    assert (sorted(Path(p).name for p in train.image_path) == sorted(Path(s["image"]).name for s in entry["train"]))
    assert len(train) == 6 + 1 and int(train.label_index.sum()) == 1
    assert len(test) == (20 - 6) + 6 + (10 - 1) == len(entry["test"])
    assert not set(train.image_path) & set(test.image_path)
    defect = train[train.label_index == 1].iloc[0]
    assert defect.mask_path.endswith("_mask.png")
    item = dm.train_data[int(train.index[train.label_index == 1][0])]
    assert item.gt_label == 1 and item.gt_mask.sum() > 0  # training carries the defect's mask
    baseline = datamodule(mvtec_root, train_defects=False)
    baseline.setup("fit")
    assert len(baseline.train_data) == 6 and int(baseline.train_data.samples.label_index.sum()) == 0
    assert list(baseline.test_data.samples.image_path) == list(test.image_path)


def test_folder_datamodule_takes_a_manifest(mvtec_root, tmp_path):
    split = make_split(mvtec_root, categories=[CATEGORY], seed=3)
    base = mvtec_root / CATEGORY
    dm = ColdStartFolder(
        name=CATEGORY, root=base, normal_dir="train/good", normal_test_dir="test/good",
        abnormal_dir=["test/scratch", "test/hole"], mask_dir=["ground_truth/scratch", "ground_truth/hole"],
        train_batch_size=4, eval_batch_size=8, num_workers=0, split=split,
    )
    dm.setup("fit")
    expected = sorted(str((mvtec_root / s["image"]).resolve()) for s in split["categories"][CATEGORY]["train"])
    assert sorted(str(Path(p).resolve()) for p in dm.train_data.samples.image_path) == expected
    other = {**split, "root": str(tmp_path)}  # a manifest of another root: its images are not the folder's
    with pytest.raises(ValueError, match="not among the images"):
        bad = ColdStartFolder(name=CATEGORY, root=base, normal_dir="train/good", abnormal_dir="test/scratch",
                              mask_dir="ground_truth/scratch", num_workers=0, split=other)
        bad.setup("fit")


def test_defect_sampler_puts_defects_in_every_batch(mvtec_root):
    labels = [0] * 13 + [1] * 2
    sampler = DefectBatchSampler(labels, batch_size=4, defects_per_batch=1, seed=0)
    for _ in range(2):
        batches = list(sampler)
        assert len(batches) == len(sampler) == math.ceil(13 / 3)
        assert all(sum(labels[i] for i in b) == 1 for b in batches)
        assert sorted(i for b in batches for i in b if labels[i] == 0) == list(range(13))  # each normal once
    dm = datamodule(mvtec_root, defects_per_batch=2)
    dm.setup("fit")
    for batch in dm.train_dataloader():
        assert int(batch.gt_label.sum()) == 2 and batch.gt_mask.flatten(1).any(1).sum() == 2
    with pytest.raises(ValueError, match="defects_per_batch"):
        DefectBatchSampler(labels, batch_size=4, defects_per_batch=4)
    with pytest.raises(ValueError, match="none"):
        DefectBatchSampler([0, 0, 0], batch_size=2, defects_per_batch=1)


# ------------------------------------------------------------------------------------------- training step


@pytest.mark.parametrize("make", [rd_model, dinomaly_model], ids=["rd", "dinomaly"])
def test_arcad_terms_are_nonzero_on_batches_with_defects(mvtec_root, make):
    torch.manual_seed(0)
    model = make()
    model.train()
    batch = training_batch(mvtec_root, model)
    first = logged_step(model, batch)  # the prototypes initialise from this step's normal patches
    assert model.arcad.initialized
    second = logged_step(model, batch)
    for values in (first, second):
        assert all(math.isfinite(v) for v in values.values())
    assert second["arcad_dgc"] > 0 and second["arcad_cls"] > 0 and second["arcad_loss"] > 0
    assert second["loss"] == pytest.approx(second["train_recon_loss"] + second["arcad_loss"], rel=1e-5)


@pytest.mark.parametrize("make", [rd_model, dinomaly_model], ids=["rd", "dinomaly"])
def test_decoder_gradient_comes_from_normal_images_only(mvtec_root, make):
    torch.manual_seed(0)
    model = make()
    model.train()
    batch = training_batch(mvtec_root, model)
    model.log = lambda *args, **kwargs: None
    model.training_step(batch)  # initialise the prototypes, so that ArcAD's terms reach the bottleneck

    def grads(images: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        torch.manual_seed(1)
        batch.image = images
        model.training_step(batch)["loss"].backward()
        model.load_state_dict(state)  # undo the BatchNorm and prototype updates of this step
        decoder = {n: p.grad.clone() for n, p in model.model.decoder.named_parameters() if p.grad is not None}
        bottleneck = {n: p.grad.clone() for n, p in model.model.bottleneck.named_parameters() if p.grad is not None}
        return decoder, bottleneck

    images = batch.image.clone()
    defective = batch.gt_label.bool()
    changed = images.clone()
    changed[defective] = torch.randn_like(changed[defective])
    decoder_a, bottleneck_a = grads(images)
    decoder_b, bottleneck_b = grads(changed)
    assert decoder_a and bottleneck_a
    for name in decoder_a:
        torch.testing.assert_close(decoder_a[name], decoder_b[name], rtol=1e-5, atol=1e-7)
    # the defective image does train the bottleneck, through ArcAD's terms
    assert any(not torch.allclose(bottleneck_a[n], bottleneck_b[n]) for n in bottleneck_a)


@pytest.mark.parametrize("make", [rd_model, dinomaly_model], ids=["rd", "dinomaly"])
def test_missed_reads_anomalibs_inference_map_without_changing_the_model(mvtec_root, make):
    """calibrate="missed": the training step hands ArcAD anomalib's eval-mode anomaly map of the batch; the model
    stays in training mode and its running statistics are those of the step without it."""
    torch.manual_seed(0)
    model = make(arcad_options={"calibrate": "missed"})
    model.train()
    batch = training_batch(mvtec_root, model)
    seen = []
    forward = model.arcad.forward
    model.arcad.forward = lambda z, **kwargs: seen.append(kwargs["scores"]) or forward(z, **kwargs)
    model.log = lambda *args, **kwargs: None
    model.training_step(batch)
    model.eval()
    with torch.no_grad():
        expected = model.model(batch.image).anomaly_map
    torch.testing.assert_close(seen[0], expected)
    assert seen[0].shape[0] == batch.image.shape[0] and not seen[0].requires_grad
    # the same step without the inference map leaves the same running statistics
    torch.manual_seed(0)
    plain = make()
    plain.train()
    plain.log = lambda *args, **kwargs: None
    plain.training_step(batch)
    model.train()
    for (name, a), (_, b) in zip(model.model.named_buffers(), plain.model.named_buffers(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_rd_frozen_encoder_keeps_its_running_statistics(mvtec_root):
    # anomalib's RD4AD puts its encoder in eval mode inside forward: the normal-rows BatchNorm statistics of the
    # training step apply to the bottleneck and decoder only, and the encoder's features are its eval-mode ones
    torch.manual_seed(0)
    model = rd_model()
    model.train()  # as Lightning does: the encoder too, until RD4AD's forward sets it to eval
    batch = training_batch(mvtec_root, model)
    encoder = model.model.encoder
    stats = {k: v.clone() for k, v in encoder.state_dict().items()}
    seen = {}
    handle = encoder.register_forward_hook(lambda module, inputs, output: seen.update(output))
    logged_step(model, batch)
    handle.remove()
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(value, stats[key], msg=key)
    encoder.eval()
    with torch.no_grad():
        expected = encoder(batch.image)
    for name, features in expected.items():
        torch.testing.assert_close(seen[name], features)


# ------------------------------------------------------------------------------------------- the Engine


@pytest.fixture(scope="module")
def fitted_rd(mvtec_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("rd")
    torch.manual_seed(0)
    model = rd_model(arcad_maps=True)
    dm = datamodule(mvtec_root, defects_per_batch=1)
    eng = engine(root, max_steps=6)
    eng.fit(model, datamodule=dm)
    return model, dm, eng


def test_engine_fit_and_test_rd(fitted_rd):
    model, dm, eng = fitted_rd
    metrics = eng.trainer.callback_metrics
    for name in ("train_loss", "train_recon_loss", "arcad_loss", "arcad_spm", "arcad_dgc", "arcad_cls"):
        assert math.isfinite(float(metrics[name])), name
    assert float(metrics["arcad_dgc"]) > 0
    assert eng.trainer.global_step == 6
    results = eng.test(model, datamodule=dm)[0]
    assert {"image_AUROC", "pixel_AUROC"} <= set(results)
    assert all(math.isfinite(v) for v in results.values())


def test_checkpoint_round_trip_restores_arcad(fitted_rd):
    model, dm, eng = fitted_rd
    path = eng.trainer.checkpoint_callback.best_model_path or eng.trainer.checkpoint_callback.last_model_path
    assert path and Path(path).is_file()
    # as for anomalib's own models, a non-default pre-processor is passed again (RD sizes its maps from it)
    restored = ArcADReverseDistillation.load_from_checkpoint(path, pre_processor=pre_processor(64))
    assert restored.arcad.initialized and restored.arcad_maps
    assert restored.hparams["num_prototypes"] == 2
    expected = model.arcad.state_dict()
    for key, value in restored.arcad.state_dict().items():
        torch.testing.assert_close(value, expected[key], msg=key)
    fresh = rd_model(arcad_maps=True)
    assert not fresh.arcad.initialized  # the state came from the checkpoint, not the constructor
    # the restored model predicts what the trained one predicts, ArcAD's maps included
    model.eval()
    restored.eval()
    batch = next(iter(dm.test_dataloader()))
    batch.image, batch.gt_mask = model.pre_processor.transform(batch.image, batch.gt_mask)
    with torch.no_grad():
        a = model.test_step(batch.update(in_place=False), 0)
        b = restored.test_step(batch.update(in_place=False), 0)
    torch.testing.assert_close(a.anomaly_map, b.anomaly_map)
    torch.testing.assert_close(a.arcad_discriminator_map, b.arcad_discriminator_map)
    # and Engine.test restores it from the checkpoint path too
    results = eng.test(rd_model(arcad_maps=True), datamodule=dm, ckpt_path=path)[0]
    assert math.isfinite(results["image_AUROC"])


def test_extra_maps_leave_anomalib_inference_unchanged(fitted_rd):
    model, dm, _ = fitted_rd
    model.eval()
    batch = next(iter(dm.test_dataloader()))
    batch.image, batch.gt_mask = model.pre_processor.transform(batch.image, batch.gt_mask)
    with torch.no_grad():
        reference = model.model(batch.image).anomaly_map[:, 0]  # anomalib's own inference, (B, 1, H, W)
        with_maps = model.test_step(batch.update(in_place=False), 0)
        model.arcad_maps = False
        without = model.test_step(batch.update(in_place=False), 0)
        model.arcad_maps = True
    torch.testing.assert_close(with_maps.anomaly_map, reference)
    torch.testing.assert_close(without.anomaly_map, reference)
    assert not hasattr(without, "arcad_prototype_map")
    b, h, w = batch.image.shape[0], *batch.image.shape[-2:]
    assert with_maps.arcad_prototype_map.shape == (b, h, w) == with_maps.arcad_discriminator_map.shape
    assert with_maps.arcad_prototype_map.min() >= 0 and with_maps.arcad_discriminator_map.max() <= 1


class LearningRates(Callback):
    def __init__(self) -> None:
        self.seen: list[list[float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append([group["lr"] for group in trainer.optimizers[0].param_groups])


def test_engine_fit_and_test_dinomaly_with_arcad_in_the_schedule(mvtec_root, tmp_path):
    torch.manual_seed(0)
    model = dinomaly_model()
    dm = datamodule(mvtec_root)  # 7 training images at batch 4: two steps an epoch
    rates = LearningRates()
    eng = engine(tmp_path, max_steps=5, callbacks=[rates])
    eng.fit(model, datamodule=dm)
    optimizer = eng.trainer.optimizers[0]
    arcad_params = {id(p) for p in model.arcad.parameters()}
    assert {id(p) for p in optimizer.param_groups[-1]["params"]} == arcad_params
    assert len(rates.seen) == 5
    model_lr = [seen[0] for seen in rates.seen]
    assert [seen[-1] for seen in rates.seen] == model_lr  # ArcAD's group follows the schedule at every step
    # stepped per optimiser step: the warm-up from 0 moves within the first epoch (two steps)
    assert model_lr[0] == 0 and 0 < model_lr[1] < model_lr[2] < model_lr[3]
    metrics = eng.trainer.callback_metrics
    assert all(math.isfinite(float(metrics[n])) for n in ("train_loss", "arcad_loss", "arcad_spm"))
    results = eng.test(model, datamodule=dm)[0]
    assert all(math.isfinite(v) for v in results.values())


def test_anomalib_dinomaly_schedule_stays_at_zero_for_the_first_epoch(mvtec_root, tmp_path):
    # the pitfall SteppedDinomaly fixes, seen on anomalib's own class
    torch.manual_seed(0)
    rates = {}
    for cls in (Dinomaly, SteppedDinomaly):
        with timm_weights(RANDOM_WEIGHTS):
            model = cls(encoder_name=DINO_ENCODER, pre_processor=pre_processor(56), visualizer=False, evaluator=False)
        recorder = LearningRates()
        engine(tmp_path / cls.__name__, max_steps=2, callbacks=[recorder]).fit(
            model, datamodule=datamodule(mvtec_root, train_defects=False)
        )
        rates[cls] = [seen[0] for seen in recorder.seen]
    assert rates[Dinomaly] == [0.0, 0.0]
    assert rates[SteppedDinomaly][0] == 0.0 and rates[SteppedDinomaly][1] > 0


def test_a_group_added_after_the_scheduler_is_scheduled():
    from torch_arcad.integrations.anomalib.models import _schedule_new_group

    weight, extra = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    optimizer.add_param_group({"params": [extra], "lr": 2.0})
    _schedule_new_group(scheduler, optimizer, optimizer.param_groups[-1])
    for step in range(1, 4):
        optimizer.step()
        scheduler.step()
        assert [g["lr"] for g in optimizer.param_groups] == [0.5**step, 2.0 * 0.5**step]


# ------------------------------------------------------------------------------------------- weights


def test_local_weights_file_is_loaded(tmp_path):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("resnet18", pretrained=False)
    torch.nn.init.constant_(source.conv1.weight, 0.25)
    file = tmp_path / "resnet18.safetensors"
    save_file(source.state_dict(), str(file))
    model = rd_model(backbone_weights=str(file))
    encoder = model.model.encoder.feature_extractor
    torch.testing.assert_close(encoder.conv1.weight, torch.full_like(encoder.conv1.weight, 0.25))
    torch.testing.assert_close(encoder.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    with pytest.raises(FileNotFoundError, match="not a file"):
        rd_model(backbone_weights=str(tmp_path / "missing.safetensors"))


def test_unreachable_weights_raise_a_clear_error(tmp_path):
    # offline, with an empty cache: what a machine without network access sees
    code = (
        "from torch_arcad.integrations.anomalib import ArcADReverseDistillation, BackboneWeightsError\n"
        "try:\n"
        "    ArcADReverseDistillation(backbone='resnet18', num_prototypes=2)\n"
        "except BackboneWeightsError as error:\n"
        "    print('ERROR', error)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "t")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ERROR could not obtain the pretrained weights of 'resnet18'" in done.stdout
    assert "backbone_weights=" in done.stdout
    assert issubclass(BackboneWeightsError, RuntimeError)


def test_core_package_does_not_import_anomalib():
    code = "import sys, torch_arcad, torch_arcad.coldstart, torch_arcad.integrations; print('anomalib' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
