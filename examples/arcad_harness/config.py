"""The configuration of one experiment: :class:`ExperimentConfig` and how its automatic values are chosen."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch_arcad import PRESETS

from .cache import parse_cache_mode

__all__ = [
    "BASELINES",
    "BETAS",
    "CNN_ENCODERS",
    "DEFAULT_RESUME_EVERY",
    "ENCODERS",
    "ExperimentConfig",
    "PROTOTYPE_INITS",
    "SCORE_KINDS",
    "SETTINGS",
    "VIT_ENCODERS",
    "default_eval_stride",
    "default_num_prototypes",
    "image_size_multiple",
    "resolve_config",
]

#: The built-in detectors (:mod:`arcad_harness.detectors`); ``baseline`` takes any registered name.
BASELINES: tuple[str, ...] = ("dinomaly", "rd4ad", "recontrast")
#: ``single``: one model per category; ``multi``: one model for all categories together.
SETTINGS: tuple[str, ...] = ("single", "multi")
#: Anomaly scores reported for every run (a run without ArcAD has ``recon`` only).
SCORE_KINDS: tuple[str, ...] = ("recon", "prototype", "discriminator", "fused", "fused_equal")
#: ``offline``: k-means of the untrained model's bottleneck features of all training normals before the first
#: step (what the released code does with a file); ``online``: the library's own initialisation from the first
#: training batches.
PROTOTYPE_INITS: tuple[str, ...] = ("offline", "online")
#: Convolutional encoders (features at strides 4, 8, 16) and vision transformers (tokens).
CNN_ENCODERS: tuple[str, ...] = ("efficientnet_lite0", "resnet18", "wide_resnet50_2")
VIT_ENCODERS: tuple[str, ...] = ("dinov2_vits14_reg", "dinov2_vitb14_reg")
ENCODERS: tuple[str, ...] = CNN_ENCODERS + VIT_ENCODERS

#: AdamW settings of the paper (section 4.1).
BETAS: tuple[float, float] = (0.9, 0.999)
PAPER_LR: float = 2e-3
PAPER_WEIGHT_DECAY: float = 1e-4
PAPER_LAMBDAS: tuple[float, float, float] = (0.1, 0.1, 0.1)
#: The examples' ArcAD preset.
DEFAULT_PRESET: str = "paper"

#: Patch side of the DINOv2 encoders and the coarsest stride of the CNN feature maps.
VIT_PATCH: int = 14
CNN_STRIDE: int = 16
#: Automatic image sizes: the CNN baselines' 256 px, Dinomaly's 392 px crop for DINOv2, and 128 px for the
#: generated synthetic data set (its images are drawn at 128 px).
CNN_IMAGE_SIZE: int = 256
VIT_IMAGE_SIZE: int = 392
SYNTHETIC_IMAGE_SIZE: int = 128
#: Automatic training steps: the measured CPU reference (600 steps of batch 16) on real data, fewer on the
#: small synthetic set so that an example finishes in minutes on a laptop.
REAL_DATA_STEPS: int = 600
SYNTHETIC_STEPS: int = 150
#: K is chosen so that a batch holds about this many patches per prototype: the paper's K = 500 for
#: 16 x 784 = 12,544 Dinomaly patches is 25 per prototype. Rounded to a power of two and clamped.
PATCHES_PER_PROTOTYPE: int = 25
MIN_PROTOTYPES: int = 64
MAX_PROTOTYPES: int = 500
#: Steps between training snapshots when ``resume_dir`` is set. A ReContrast step at 256 px takes 6-7 s on one thread
#: of a shared 2-core CPU (docs/results.md), so a stopped run loses at most about 6 minutes; its snapshot (80.7 MB
#: with EfficientNet-Lite0, written in under a second; docs/performance.md) costs about 0.2% of the 50 steps.
DEFAULT_RESUME_EVERY: int = 50
#: The automatic pixel subsampling of the metrics keeps maps of about this side (1 at 128 px, 2 at 256 px).
EVAL_MAP_SIDE: int = 128


@dataclass
class ExperimentConfig:
    """Everything one experiment needs; ``None`` fields are chosen automatically (see :func:`resolve_config`).

    Attributes:
        baseline: the detector, a name of the registry (:func:`~arcad_harness.detectors.get_detector`): built in are
            ``"dinomaly"``, ``"rd4ad"`` and ``"recontrast"``.
        data_root: a data set in the MVTec AD layout; ``None`` generates (once, cached) the synthetic data set of
            :func:`torch_arcad.datasets.make_synthetic_dataset`.
        split_path: a cold-start manifest (``python -m torch_arcad.coldstart``); ``None`` makes the split with
            ``split_seed``.
        categories: categories to train and evaluate; ``None`` = all of the split / data root.
        setting: ``"single"`` (one model per category) or ``"multi"`` (one model on all categories).
        arcad: train with ArcAD on the whole cold-start training set; ``False`` trains the plain baseline on the
            training normals only (the paper's protocol for unsupervised baselines).
        steps: optimiser steps per model (``None``: 600, or 150 on the generated synthetic set).
        batch_size: images per step.
        image_size: square input side (``None``: 256 for CNN encoders, 392 for DINOv2, 128 on synthetic data).
        lr: AdamW learning rate (the paper's 2e-3); ReContrast's trainable encoder uses its own 1e-5.
        weight_decay: AdamW weight decay (the paper's 1e-4).
        seed: training seed (model initialisation, batch order, dropout, ArcAD's k-means and noise).
        split_seed: seed of the cold-start split made when ``split_path`` is ``None``.
        num_prototypes: K (``None``: patches per batch / 25, as a power of two in [64, 500]).
        lambdas: lambda_1..3 of eq. 10 (SPM, DGC, CLS).
        preset: ArcAD preset (``torch_arcad.PRESETS``): ``"paper"`` (the default) or ``"official"``.
        prototype_init: ``"offline"`` or ``"online"`` (see :data:`PROTOTYPE_INITS`).
        encoder: one of :data:`ENCODERS`.
        weights: encoder checkpoint: a path, ``"packaged"`` (EfficientNet-Lite0, the default for it),
            ``"imagenet"`` / ``"lvd142m"`` (downloads), or ``"random"`` (untrained, for tests only).
        width: model width (RD4AD / ReContrast: channels D of the bottleneck; Dinomaly: hidden width of the
            bottleneck MLP); ``None`` = the detector's default for the encoder.
        device: torch device string.
        output_dir: folder for ``results.json``, ``results.md`` and ``figures/``; ``None`` writes nothing.
        figures: write PNG figures (needs Matplotlib) when ``output_dir`` is set.
        log_every: print progress every this many steps (0: never).
        eval_stride: evaluate pixel metrics on every ``eval_stride``-th row and column (``None``: image_size // 128).
        score: headline score kind printed first (one of :data:`SCORE_KINDS`).
        synthetic: keyword overrides for :func:`~torch_arcad.datasets.make_synthetic_dataset` (``image_size``,
            ``num_train``, ``num_test_good``, ``num_defects_per_kind``, ``categories``, ``seed``, ``root``).
        verbose: print progress and tables.
        feature_cache: where the frozen encoder's features of each image are kept, computed once:
            ``"memory"``, ``"disk:<folder>"`` or ``"off"`` (the encoder runs at every step); results are the same
            (see :mod:`arcad_harness.cache`).
        arcad_options: further keyword arguments of ``torch_arcad.ArcAD`` (settings of ``torch_arcad.ArcADConfig`` by
            name, e.g. ``{"mask_threshold": 0.25}``, ``{"mask_weighting": "fraction"}``).
        fusion_holdout: defective training images of each category withheld from training and used only to fit
            the ``fused`` score's weights (see :func:`arcad_harness.data.hold_out_defects`); 0 fits the weights on
            the training defects, which the model was trained on. Needs ``arcad``.
        resume_dir: folder of training snapshots (see :mod:`arcad_harness.snapshots`): every ``resume_every``
            steps each model's training state is written there, and a run that finds the snapshot of the same
            training configuration continues from it with the result of an uninterrupted run; removed once the
            results are computed. ``None``: no snapshots.
        resume_every: steps between snapshots (with ``resume_dir``).
    """

    baseline: str = "rd4ad"
    data_root: str | None = None
    split_path: str | None = None
    categories: list[str] | None = None
    setting: str = "single"
    arcad: bool = True
    steps: int | None = None
    batch_size: int = 16
    image_size: int | None = None
    lr: float = PAPER_LR
    weight_decay: float = PAPER_WEIGHT_DECAY
    seed: int = 0
    split_seed: int = 0
    num_prototypes: int | None = None
    lambdas: tuple[float, float, float] = PAPER_LAMBDAS
    preset: str = DEFAULT_PRESET
    prototype_init: str = "offline"
    encoder: str = "efficientnet_lite0"
    weights: str | None = None
    width: int | None = None
    device: str = "cpu"
    output_dir: str | None = None
    figures: bool = True
    log_every: int = 25
    eval_stride: int | None = None
    score: str = "recon"
    synthetic: dict[str, Any] = field(default_factory=dict)
    verbose: bool = True
    feature_cache: str = "memory"
    arcad_options: dict[str, Any] = field(default_factory=dict)
    fusion_holdout: int = 0
    resume_dir: str | None = None
    resume_every: int = DEFAULT_RESUME_EVERY

    def validate(self) -> None:
        """Check every field; raises ``ValueError`` / ``TypeError`` naming the field, what it expects and got."""
        from .detectors.registry import DETECTORS  # the detectors import this module

        _choice("baseline", self.baseline, tuple(DETECTORS))
        _choice("setting", self.setting, SETTINGS)
        _choice("score", self.score, SCORE_KINDS)
        _choice("prototype_init", self.prototype_init, PROTOTYPE_INITS)
        _choice("encoder", self.encoder, ENCODERS)
        _choice("preset", self.preset, tuple(PRESETS))
        for name in ("batch_size", "resume_every"):
            _positive_int(name, getattr(self, name))
        for name in ("steps", "image_size", "num_prototypes", "eval_stride", "width"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        for name in ("seed", "split_seed", "log_every", "fusion_holdout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        lambdas = tuple(self.lambdas)
        if len(lambdas) != 3 or any(not isinstance(v, (int, float)) or v < 0 for v in lambdas):
            raise ValueError(f"lambdas must be three numbers >= 0 (SPM, DGC, CLS), got {self.lambdas!r}")
        if not self.arcad and self.score != "recon":
            raise ValueError(
                f"score={self.score!r} needs ArcAD: a run without ArcAD (arcad=False / --no-arcad) has the "
                "'recon' score only"
            )
        if not self.arcad and self.fusion_holdout:
            raise ValueError(
                f"fusion_holdout={self.fusion_holdout} needs ArcAD: a run without ArcAD has no fused score to fit"
            )
        if self.categories is not None and (isinstance(self.categories, str) or not list(self.categories)):
            raise ValueError(f"categories must be None or a non-empty list of names, got {self.categories!r}")
        if self.baseline in ("rd4ad", "recontrast") and self.encoder in VIT_ENCODERS:
            raise ValueError(
                f"{self.baseline} reconstructs CNN feature maps at strides 4, 8, 16: encoder must be one of "
                f"{CNN_ENCODERS}, got {self.encoder!r} (DINOv2 encoders are for dinomaly)"
            )
        if self.image_size is not None:
            multiple = image_size_multiple(self.baseline, self.encoder)
            if self.image_size % multiple:
                raise ValueError(
                    f"image_size must be a multiple of {multiple} for {self.baseline} with {self.encoder} "
                    f"(the feature grids must halve evenly), got {self.image_size}"
                )
        parse_cache_mode(self.feature_cache)
        if self.resume_dir is not None and not isinstance(self.resume_dir, (str, Path)):
            raise TypeError(f"resume_dir must be None or a folder path, got {self.resume_dir!r}")
        if not isinstance(self.arcad_options, dict):
            raise TypeError(f"arcad_options must be a dict of torch_arcad.ArcAD keywords, got {self.arcad_options!r}")
        if not isinstance(self.synthetic, dict):
            raise TypeError(f"synthetic must be a dict of make_synthetic_dataset keywords, got {self.synthetic!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy of the fields."""
        data = dataclasses.asdict(self)
        data["lambdas"] = list(self.lambdas)
        return data


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def image_size_multiple(baseline: str, encoder: str) -> int:
    """What the image side must be a multiple of: the ViT patch (14), the stride of ``z`` for the OCBE models
    (32 when the embedding halves the stride-16 map, as for the ResNets), else the CNN's stride 16."""
    if encoder in VIT_ENCODERS:
        return VIT_PATCH
    if baseline in ("rd4ad", "recontrast") and encoder in ("resnet18", "wide_resnet50_2"):
        return 2 * CNN_STRIDE
    return CNN_STRIDE


def default_num_prototypes(patches_per_batch: int) -> int:
    """Automatic K: ``patches_per_batch / 25`` rounded to a power of two, clamped to [64, 500].

    Gives 64 for 1,024 patches (16 images of 8 x 8), 128 for 4,096 (16 x 16 x 16) and 500 for Dinomaly's
    12,544 (16 x 28 x 28), the paper's value.
    """
    if patches_per_batch < 1:
        raise ValueError(f"patches_per_batch must be >= 1, got {patches_per_batch}")
    exponent = round(math.log2(max(patches_per_batch / PATCHES_PER_PROTOTYPE, 1.0)))
    return int(min(MAX_PROTOTYPES, max(MIN_PROTOTYPES, 2**exponent)))


def default_eval_stride(image_size: int) -> int:
    """Automatic pixel subsampling of the metrics: ``max(1, image_size // 128)``."""
    return max(1, image_size // EVAL_MAP_SIDE)


def resolve_config(cfg: ExperimentConfig, *, synthetic: bool) -> ExperimentConfig:
    """A copy of ``cfg`` with ``steps``, ``image_size`` and ``eval_stride`` filled in.

    Args:
        cfg: a validated configuration.
        synthetic: whether the data set is the generated synthetic one (smaller automatic sizes).

    Returns:
        A new :class:`ExperimentConfig`; ``num_prototypes`` stays ``None`` until the model's patch grid is known
        (see :func:`arcad_harness.detector.num_prototypes`).
    """
    image_size = cfg.image_size
    if image_size is None:
        if cfg.encoder in VIT_ENCODERS:
            image_size = VIT_IMAGE_SIZE
        elif synthetic:
            image_size = SYNTHETIC_IMAGE_SIZE
        else:
            image_size = CNN_IMAGE_SIZE
    steps = cfg.steps if cfg.steps is not None else (SYNTHETIC_STEPS if synthetic else REAL_DATA_STEPS)
    eval_stride = cfg.eval_stride if cfg.eval_stride is not None else default_eval_stride(image_size)
    return dataclasses.replace(
        cfg,
        image_size=image_size,
        steps=steps,
        eval_stride=eval_stride,
        lambdas=tuple(cfg.lambdas),
        categories=None if cfg.categories is None else list(cfg.categories),
        synthetic=dict(cfg.synthetic),
        arcad_options=dict(cfg.arcad_options),
    )
