"""ArcAD in anomalib: its ``ReverseDistillation`` and ``Dinomaly`` trained on a cold-start split, in its ``Engine``.

Install with ``pip install "torch-arcad[anomalib]"`` (anomalib 2.7). This module is the only one of the package
that imports anomalib. What it adds to anomalib, without copying any of its model code:

- :class:`ArcADReverseDistillation` and :class:`ArcADDinomaly`: anomalib's models with ArcAD attached. ``z`` is taken
  by a forward hook on the model's bottleneck (RD4AD's OCBE output ``(B, 512 * expansion, h, w)``; Dinomaly's
  bottleneck MLP output ``(B, 1 + registers + h * w, D)``). The training step computes anomalib's own
  reconstruction loss on the normal images of the batch only and adds ``arcad(z, masks, labels).loss``;
  ArcAD's discriminator joins the optimiser, in a parameter group that the model's learning-rate scheduler
  also drives; ArcAD's terms are logged through Lightning (``train_recon_loss``, ``arcad_loss``, ``arcad_spm``,
  ``arcad_dgc``, ``arcad_cls``). Inference is anomalib's (``self.model`` is untouched); with ``arcad_maps=True``
  the validation, test and predict batches also carry ArcAD's prototype-distance and discriminator maps. ArcAD's
  state (prototypes, discriminator) is part of the Lightning checkpoint.
- :class:`SteppedDinomaly`: anomalib's ``Dinomaly`` with its warm-up/cosine schedule stepped once per optimiser
  step, as the schedule is defined (anomalib 2.7 returns it without ``interval="step"``, so under ``Engine`` it
  advances once per epoch and the learning rate stays 0 for the whole first epoch). The baseline to compare
  :class:`ArcADDinomaly` with.
- :class:`ColdStartMVTecAD` and :class:`ColdStartFolder`: anomalib's ``MVTecAD`` / ``Folder`` datamodules whose
  train and test sets follow the cold-start split of :func:`torch_arcad.coldstart.make_split` (section 4.1):
  the split's defective images go to training with their masks (``train_defects=False`` keeps only the split's
  normal images, for the baseline), and ``defects_per_batch=k`` guarantees k defective images in every batch
  (:class:`DefectBatchSampler`).
- :func:`timm_weights`: where anomalib's timm backbones take their pretrained weights from: a local file (for
  machines without access to the Hugging Face hub), ``"random"`` (tests, smoke runs), or the hub with a clear
  :class:`BackboneWeightsError` when the weights cannot be obtained. The models take it as ``backbone_weights``.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:
    import anomalib  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "torch_arcad.integrations.anomalib needs anomalib: pip install \"torch-arcad[anomalib]\""
    ) from error

import timm
from anomalib.data import Folder, MVTecAD
from anomalib.models import Dinomaly, ReverseDistillation
from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode
from torch.utils.data import DataLoader, Sampler

from torch_arcad import ArcAD, ArcADOutput
from torch_arcad.coldstart import load_split, make_split

__all__ = [
    "RANDOM_WEIGHTS",
    "ArcADDinomaly",
    "ArcADReverseDistillation",
    "BackboneWeightsError",
    "ColdStartFolder",
    "ColdStartMVTecAD",
    "DefectBatchSampler",
    "SteppedDinomaly",
    "timm_weights",
]

PathLike = Union[str, "os.PathLike[str]"]

#: ``backbone_weights`` value for a randomly initialised backbone (tests and smoke runs: results mean nothing).
RANDOM_WEIGHTS = "random"

#: Names under which the training step logs ArcAD's terms (Lightning ``self.log``).
LOGGED_TERMS = ("train_loss", "train_recon_loss", "arcad_loss", "arcad_spm", "arcad_dgc", "arcad_cls")


# ---------------------------------------------------------------------------------------------- backbone weights


class BackboneWeightsError(RuntimeError):
    """The pretrained weights of a backbone could not be obtained (no network, no cache, or a bad local file)."""


def _check_weights(weights: PathLike | None) -> str | None:
    if weights is None or weights == RANDOM_WEIGHTS:
        return weights
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"backbone_weights must be None, {RANDOM_WEIGHTS!r} or a file path, got {weights!r}")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone_weights={str(weights)!r} is not a file: give the path of the backbone's weights "
            "(a timm / torchvision state dict, .safetensors, .pth or .bin)"
        )
    return str(path.resolve())


@contextlib.contextmanager
def timm_weights(weights: PathLike | None) -> Iterator[None]:
    """Within the block, every timm model created with ``pretrained=True`` takes its weights from ``weights``.

    anomalib's backbones are ``timm.create_model(name, pretrained=...)`` calls (anomalib's ``Dinomaly`` always
    asks for pretrained weights); this decides where they come from:

    - ``None``: timm's default source (the Hugging Face hub, or its local cache). When that fails (no network
      and no cached copy), :class:`BackboneWeightsError` says so and names the two ways out.
    - a path: the weights are loaded from that file through timm's ``pretrained_cfg_overlay=dict(file=...)``,
      so timm adapts them exactly as it adapts downloaded ones (classifier dropped for feature extraction).
    - ``"random"``: the backbone keeps its random initialisation (tests; the detector's scores then mean
      nothing).

    Example::

        with timm_weights("~/weights/wide_resnet50_2.safetensors"):
            model = ReverseDistillation()  # anomalib's own class
    """
    weights = _check_weights(weights)
    original = timm.create_model

    def create_model(model_name: str, pretrained: bool = False, *args: Any, **kwargs: Any) -> nn.Module:
        if not pretrained or weights == RANDOM_WEIGHTS:
            return original(model_name, False, *args, **kwargs)
        if weights is not None:
            overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
            overlay["file"] = weights
            try:
                return original(model_name, True, *args, pretrained_cfg_overlay=overlay, **kwargs)
            except Exception as error:
                raise BackboneWeightsError(
                    f"could not load the weights of {model_name!r} from {weights}: {error}"
                ) from error
        try:
            return original(model_name, True, *args, **kwargs)
        except Exception as error:
            raise BackboneWeightsError(
                f"could not obtain the pretrained weights of {model_name!r} ({type(error).__name__}: {error}). "
                "timm downloads them from the Hugging Face hub; without network access give a local file: "
                "backbone_weights='/path/to/weights.safetensors' (the model's timm state dict, e.g. copied from "
                "a machine where `timm.create_model(name, pretrained=True)` worked), or "
                f"backbone_weights={RANDOM_WEIGHTS!r} for a randomly initialised backbone (tests only: the scores "
                "then mean nothing)"
            ) from error

    timm.create_model = create_model
    try:
        yield
    finally:
        timm.create_model = original


# ---------------------------------------------------------------------------------------- training helpers


def _batch_norm_from_rows(norm: nn.modules.batchnorm._BatchNorm, rows: Tensor, x: Tensor) -> Tensor:
    """``norm`` in training mode with the batch statistics of ``x[rows]`` only, applied to every row; in eval mode
    (RD4AD's frozen encoder puts itself there inside its forward) the module's own forward, running statistics."""
    if not norm.training:
        return type(norm).forward(norm, x)
    reference = x[rows]
    out_reference = type(norm).forward(norm, reference)  # updates the running statistics from these rows only
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    mean = reference.mean(dim=dims).view(shape)
    var = reference.var(dim=dims, unbiased=False).view(shape)
    out = (x - mean) * torch.rsqrt(var + norm.eps)
    if norm.affine:
        out = out * norm.weight.view(shape) + norm.bias.view(shape)
    return out.index_copy(0, rows, out_reference)


@contextlib.contextmanager
def batch_statistics_from(module: nn.Module, rows: Tensor) -> Iterator[None]:
    """Within the block, every BatchNorm of ``module`` in training mode takes its batch statistics (and updates its
    running statistics) from the rows ``rows`` (int64 ``(M,)``) of its input only, and normalises every row with
    them. RD4AD's bottleneck and decoder are full of BatchNorm: this keeps the normal images' reconstruction (and
    the decoder's gradient) independent of the defective images in the batch. No row: whole-batch statistics."""
    if rows.numel() == 0:
        yield
        return
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for norm in norms:
        norm.forward = lambda x, norm=norm: _batch_norm_from_rows(norm, rows, x)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for norm in norms:
            del norm.forward


def _labels_and_masks(batch: Any) -> tuple[Tensor, Tensor | None]:
    """``(labels (B,) int64, masks (B, H, W) float or None)`` of an anomalib batch."""
    images = batch.image
    if batch.gt_label is not None:
        labels = torch.as_tensor(batch.gt_label, device=images.device).reshape(-1).long()
    else:
        labels = torch.zeros(images.shape[0], dtype=torch.long, device=images.device)
    masks = batch.gt_mask
    if masks is not None:
        masks = torch.as_tensor(masks, device=images.device).float()
        if masks.dim() == 4:  # (B, 1, H, W)
            masks = masks[:, 0]
    return labels, masks


def _split_optimizer_config(config: Any) -> tuple[torch.optim.Optimizer, list[Any]]:
    """The optimiser and its schedulers from what ``configure_optimizers`` returned (one optimiser)."""

    def scheduler_of(item: Any) -> Any:
        return item["scheduler"] if isinstance(item, Mapping) else item

    if isinstance(config, torch.optim.Optimizer):
        return config, []
    if isinstance(config, Mapping):
        scheduler = config.get("lr_scheduler")
        return config["optimizer"], [] if scheduler is None else [scheduler_of(scheduler)]
    if isinstance(config, (list, tuple)) and len(config) == 2 and isinstance(config[0], (list, tuple)):
        optimizers, schedulers = config
        if len(optimizers) != 1:
            raise ValueError(f"ArcAD supports models with one optimiser, got {len(optimizers)}")
        return optimizers[0], [scheduler_of(s) for s in schedulers]
    if isinstance(config, (list, tuple)) and len(config) == 1 and isinstance(config[0], torch.optim.Optimizer):
        return config[0], []
    raise TypeError(f"unsupported configure_optimizers() result for ArcAD: {type(config).__name__}")


def _schedule_new_group(scheduler: Any, optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> None:
    """Make ``scheduler`` (built before ``group`` was added to ``optimizer``) drive ``group`` too.

    A torch scheduler keeps one entry per parameter group in ``base_lrs`` (and ``lr_lambdas``, ``min_lrs``,
    ``max_lrs`` where it has them) and zips its values with the groups, so a group added afterwards would
    silently keep its initial learning rate. The new group gets the entries of group 0, and its current learning
    rate is scaled as group 0's is (0 during a warm-up from 0).
    """
    if getattr(scheduler, "optimizer", None) is not optimizer:
        return
    first = optimizer.param_groups[0]
    group.setdefault("initial_lr", group["lr"])
    base_lrs = getattr(scheduler, "base_lrs", None)
    if isinstance(base_lrs, list):
        base_first = base_lrs[0]
        base_lrs.append(group["initial_lr"])
        group["lr"] = group["initial_lr"] * (first["lr"] / base_first) if base_first else first["lr"]
    for name in ("lr_lambdas", "min_lrs", "max_lrs"):
        values = getattr(scheduler, name, None)
        if isinstance(values, list) and len(values) == len(optimizer.param_groups) - 1:
            values.append(values[0])
    last = getattr(scheduler, "_last_lr", None)
    if isinstance(last, list):
        last.append(group["lr"])


class _ArcADTraining:
    """What the two ArcAD models share: ArcAD's module, the bottleneck hook, the optimiser and the logging.

    A model class combines it with an anomalib model (``class X(_ArcADTraining, AnomalibModel)``), calls
    :meth:`_attach_arcad` at the end of ``__init__`` and implements :meth:`_reconstruction_loss`.
    """

    arcad: ArcAD
    arcad_maps: bool

    def _attach_arcad(
        self,
        bottleneck: nn.Module,
        dim: int,
        prefix_tokens: int,
        num_prototypes: int,
        arcad_options: Mapping[str, Any] | None,
        arcad_maps: bool,
        arcad_lr: float | None,
    ) -> None:
        options = dict(arcad_options or {})
        for reserved in ("dim", "num_prototypes", "prefix_tokens"):
            if reserved in options:
                raise ValueError(f"arcad_options must not set {reserved!r}: the model sets it")
        self.arcad = ArcAD(dim, num_prototypes, prefix_tokens=prefix_tokens, **options)
        self.arcad_maps = bool(arcad_maps)
        self.arcad_lr = arcad_lr
        self._bottleneck_output: Tensor | None = None
        self._capture_bottleneck = False
        bottleneck.register_forward_hook(self._store_bottleneck_output)

    def _store_bottleneck_output(self, module: nn.Module, inputs: Any, output: Tensor) -> None:
        del module, inputs
        if self._capture_bottleneck:
            self._bottleneck_output = output

    @contextlib.contextmanager
    def _capturing(self) -> Iterator[None]:
        self._capture_bottleneck = True
        self._bottleneck_output = None
        try:
            yield
        finally:
            self._capture_bottleneck = False

    def _take_bottleneck_output(self) -> Tensor:
        z, self._bottleneck_output = self._bottleneck_output, None
        if z is None:
            raise RuntimeError("the bottleneck's forward hook saw no output: the model did not run its bottleneck")
        return z

    def _reconstruction_loss(self, images: Tensor, normal: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Run the model on the whole batch (the hook stores z) and return anomalib's reconstruction loss of the
        normal images ``normal`` (bool ``(B,)``) only."""
        raise NotImplementedError

    def training_step(self, batch: Any, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """anomalib's reconstruction loss on the normal images of the batch plus ArcAD's terms on all of them.

        Args:
            batch: anomalib ``ImageBatch`` with ``image`` (B, 3, H, W), ``gt_label`` (B,) and ``gt_mask``
                (B, H, W) (a segmentation task: the cold-start datamodules give both).
        """
        del args, kwargs
        labels, masks = _labels_and_masks(batch)
        normal = labels == 0
        with self._capturing():
            recon = self._reconstruction_loss(batch.image, normal)
            z = self._take_bottleneck_output()
        out: ArcADOutput = self.arcad(z, masks=masks, labels=labels)
        loss = recon + out.loss
        size = batch.image.shape[0]
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        self.log("train_recon_loss", recon.detach(), on_step=True, on_epoch=True, batch_size=size)
        self.log("arcad_loss", out.loss.detach(), on_step=True, on_epoch=True, batch_size=size)
        self.log("arcad_spm", out.spm.detach(), on_step=True, on_epoch=True, batch_size=size)
        self.log("arcad_dgc", out.dgc.detach(), on_step=True, on_epoch=True, batch_size=size)
        self.log("arcad_cls", out.cls.detach(), on_step=True, on_epoch=True, batch_size=size)
        return {"loss": loss}

    def configure_optimizers(self) -> Any:
        """The anomalib model's optimiser and schedule, with ArcAD's discriminator in a group the schedule drives.

        The group takes the optimiser's defaults (its learning rate, betas, weight decay) unless ``arcad_lr`` is
        given; a scheduler that sets absolute values (Dinomaly's warm-up/cosine) sets them for this group too.
        """
        config = super().configure_optimizers()  # type: ignore[misc]
        optimizer, schedulers = _split_optimizer_config(config)
        group: dict[str, Any] = {"params": [p for p in self.arcad.parameters() if p.requires_grad]}
        if self.arcad_lr is not None:
            group["lr"] = self.arcad_lr
        optimizer.add_param_group(group)
        added = optimizer.param_groups[-1]
        for scheduler in schedulers:
            _schedule_new_group(scheduler, optimizer, added)
        return config

    def _add_arcad_maps(self, batch: Any, z: Tensor | None) -> Any:
        if not self.arcad_maps or z is None or not self.arcad.initialized:
            return batch
        scores = self.arcad.score(z)
        size = batch.image.shape[-2:]
        for name, grid in (("arcad_prototype_map", scores.prototype), ("arcad_discriminator_map", scores.discriminator)):
            value = F.interpolate(grid[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
            setattr(batch, name, value)
        return batch

    def _evaluation_step(self, step: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
        with self._capturing():
            result = step(batch, *args, **kwargs)
            z = self._bottleneck_output
            self._bottleneck_output = None
        return self._add_arcad_maps(result, z)

    def validation_step(self, batch: Any, *args: Any, **kwargs: Any) -> Any:
        """anomalib's validation step; with ``arcad_maps`` the batch also gets ``arcad_prototype_map`` and
        ``arcad_discriminator_map``, (B, H, W) at the input image's resolution."""
        return self._evaluation_step(super().validation_step, batch, *args, **kwargs)  # type: ignore[misc]

    def test_step(self, batch: Any, *args: Any, **kwargs: Any) -> Any:
        """anomalib's test step, with ArcAD's maps as in :meth:`validation_step`."""
        return self._evaluation_step(super().test_step, batch, *args, **kwargs)  # type: ignore[misc]

    def predict_step(self, batch: Any, *args: Any, **kwargs: Any) -> Any:
        """anomalib's predict step, with ArcAD's maps as in :meth:`validation_step`."""
        return self._evaluation_step(super().predict_step, batch, *args, **kwargs)  # type: ignore[misc]

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: PathLike, *args: Any, **kwargs: Any) -> Any:
        """anomalib's ``load_from_checkpoint``. The checkpoint holds the backbone's weights, so the backbone is
        built with random weights before they are loaded (nothing is downloaded) unless ``backbone_weights`` is
        given."""
        kwargs.setdefault("backbone_weights", RANDOM_WEIGHTS)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------------ models


class ArcADReverseDistillation(_ArcADTraining, ReverseDistillation):
    """anomalib's ``ReverseDistillation`` (RD4AD) trained with ArcAD on ``z``, the OCBE bottleneck's output
    ``(B, 512 * expansion, h, w)`` (2048 channels for ``wide_resnet50_2``, 512 for ``resnet18``).

    The training step computes anomalib's ``ReverseDistillationLoss`` on the normal images of the batch only, with
    every BatchNorm of the bottleneck and decoder taking its statistics from those images
    (:func:`batch_statistics_from`), so the decoder learns from normal images alone; ArcAD's terms see the whole
    batch. Inference is anomalib's.

    Args:
        backbone, layers, anomaly_map_mode, pre_trained, pre_processor, post_processor, evaluator, visualizer:
            as anomalib's ``ReverseDistillation``.
        num_prototypes: ArcAD's K; choose it for the normal patches a step holds
            (:func:`torch_arcad.suggest_num_prototypes` of ``train_batch_size * h * w``).
        arcad_options: further keyword arguments of :class:`torch_arcad.ArcAD` (``preset``, ``mask_threshold``,
            ...; not ``dim``, ``num_prototypes`` or ``prefix_tokens``).
        arcad_maps: add ArcAD's prototype and discriminator maps to evaluation batches.
        arcad_lr: learning rate of ArcAD's discriminator (default: the optimiser's).
        backbone_weights: ``None`` (download), a local file, or ``"random"``: see :func:`timm_weights`.
    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: Sequence[str] = ("layer1", "layer2", "layer3"),
        anomaly_map_mode: AnomalyMapGenerationMode = AnomalyMapGenerationMode.ADD,
        pre_trained: bool = True,
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Any = True,
        visualizer: Any = True,
        num_prototypes: int = 500,
        arcad_options: dict[str, Any] | None = None,
        arcad_maps: bool = False,
        arcad_lr: float | None = None,
        backbone_weights: str | None = None,
    ) -> None:
        with timm_weights(backbone_weights):
            super().__init__(
                backbone=backbone,
                layers=layers,
                anomaly_map_mode=anomaly_map_mode,
                pre_trained=pre_trained,
                pre_processor=pre_processor,
                post_processor=post_processor,
                evaluator=evaluator,
                visualizer=visualizer,
            )
        self.backbone_weights = backbone_weights
        self._attach_arcad(
            self.model.bottleneck,
            int(self.model.bottleneck.inplanes),
            0,
            num_prototypes,
            arcad_options,
            arcad_maps,
            arcad_lr,
        )

    def _reconstruction_loss(self, images: Tensor, normal: Tensor) -> Tensor:
        if self.model.tiler is not None:
            raise ValueError("ArcADReverseDistillation does not support a tiler in training (masks are not tiled)")
        rows = normal.nonzero().flatten()
        with batch_statistics_from(self.model, rows):
            encoder_features, decoder_features = self.model(images)
        if rows.numel() == 0:
            return sum(d.sum() for d in decoder_features) * 0.0
        return self.loss([e[rows] for e in encoder_features], [d[rows] for d in decoder_features])


class SteppedDinomaly(Dinomaly):
    """anomalib's ``Dinomaly`` with its warm-up/cosine learning-rate schedule stepped at every optimiser step.

    anomalib 2.7 returns ``WarmCosineScheduler`` (defined in iterations: 100 warm-up steps from 0) without
    ``interval="step"``, so Lightning steps it once per epoch: on a small training set the learning rate stays at
    0 for the whole first epoch and the warm-up lasts 100 epochs. Everything else is anomalib's.

    Args:
        *args, **kwargs: as anomalib's ``Dinomaly``.
        backbone_weights: ``None`` (download), a local file, or ``"random"`` (see :func:`timm_weights`);
            anomalib's ``Dinomaly`` always asks timm for pretrained encoder weights.
    """

    def __init__(self, *args: Any, backbone_weights: str | None = None, **kwargs: Any) -> None:
        with timm_weights(backbone_weights):
            super().__init__(*args, **kwargs)
        self.backbone_weights = backbone_weights

    def configure_optimizers(self) -> Any:
        optimizers, schedulers = super().configure_optimizers()
        return {"optimizer": optimizers[0], "lr_scheduler": {"scheduler": schedulers[0], "interval": "step"}}

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: PathLike, *args: Any, **kwargs: Any) -> Any:
        """As :meth:`ArcADReverseDistillation.load_from_checkpoint`: no download, the checkpoint holds the
        encoder."""
        kwargs.setdefault("backbone_weights", RANDOM_WEIGHTS)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)


class ArcADDinomaly(_ArcADTraining, SteppedDinomaly):
    """anomalib's ``Dinomaly`` (schedule stepped per step, :class:`SteppedDinomaly`) trained with ArcAD on ``z``,
    the bottleneck MLP's output ``(B, 1 + registers + h * w, D)`` (``prefix_tokens`` = 1 + registers, 0 when the
    class token is removed or subtracted).

    The training step runs anomalib's ``get_encoder_decoder_outputs`` on the whole batch and its
    ``CosineHardMiningLoss`` on the normal images only (the decoder learns normal images alone: Dinomaly has no
    BatchNorm, and its linear attention mixes tokens within an image only); ArcAD's terms see the whole batch.

    Args:
        encoder_name, bottleneck_dropout, decoder_depth, target_layers, fuse_layer_encoder, fuse_layer_decoder,
        remove_class_token, use_context_recentering, precision, pre_processor, post_processor, evaluator,
        visualizer: as anomalib's ``Dinomaly``.
        num_prototypes, arcad_options, arcad_maps, arcad_lr, backbone_weights: as
            :class:`ArcADReverseDistillation`.
    """

    def __init__(
        self,
        encoder_name: str = "vit_base_patch14_reg4_dinov2",
        bottleneck_dropout: float = 0.2,
        decoder_depth: int = 8,
        target_layers: list[int] | None = None,
        fuse_layer_encoder: list[list[int]] | None = None,
        fuse_layer_decoder: list[list[int]] | None = None,
        remove_class_token: bool = False,
        use_context_recentering: bool = False,
        precision: str = "float32",
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Any = True,
        visualizer: Any = True,
        num_prototypes: int = 500,
        arcad_options: dict[str, Any] | None = None,
        arcad_maps: bool = False,
        arcad_lr: float | None = None,
        backbone_weights: str | None = None,
    ) -> None:
        super().__init__(
            encoder_name=encoder_name,
            bottleneck_dropout=bottleneck_dropout,
            decoder_depth=decoder_depth,
            target_layers=target_layers,
            fuse_layer_encoder=fuse_layer_encoder,
            fuse_layer_decoder=fuse_layer_decoder,
            remove_class_token=remove_class_token,
            use_context_recentering=use_context_recentering,
            precision=precision,
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
            backbone_weights=backbone_weights,
        )
        encoder = self.model.encoder
        prefix = 0 if remove_class_token or use_context_recentering else 1 + int(encoder.num_register_tokens)
        self._attach_arcad(
            self.model.bottleneck[-1],
            int(encoder.feature_extractor.num_features),
            prefix,
            num_prototypes,
            arcad_options,
            arcad_maps,
            arcad_lr,
        )

    def _reconstruction_loss(self, images: Tensor, normal: Tensor) -> Tensor:
        images = images.type(next(self.model.encoder.parameters()).dtype)
        encoder_features, decoder_features = self.model.get_encoder_decoder_outputs(images)
        rows = normal.nonzero().flatten()
        if rows.numel() == 0:
            return sum(d.sum() for d in decoder_features) * 0.0
        return self.model.loss_fn(
            encoder_features=[e[rows] for e in encoder_features],
            decoder_features=[d[rows] for d in decoder_features],
            global_step=self.global_step,
        )


# -------------------------------------------------------------------------------------------------- data


class DefectBatchSampler(Sampler[list[int]]):
    """Batches that each hold ``defects_per_batch`` defective images and ``batch_size - defects_per_batch`` normal
    ones.

    Every pass (epoch) permutes the normal images and cuts them into batches (the last one may be smaller); the
    defective images are drawn in turn from their own permutations, renewed whenever they run out, so each is used
    about equally often. Seeded: a pass depends on ``seed`` and its number only.

    Args:
        labels: (N,) image labels of the dataset, 0 normal, 1 defective.
        batch_size: images per batch.
        defects_per_batch: defective images per batch, in ``[1, batch_size)``.
        seed: seed of the permutations.
    """

    def __init__(self, labels: Sequence[int], batch_size: int, defects_per_batch: int, seed: int = 0) -> None:
        labels_t = torch.as_tensor(list(labels), dtype=torch.long)
        self.normal = (labels_t == 0).nonzero().flatten()
        self.defective = (labels_t != 0).nonzero().flatten()
        if not 1 <= defects_per_batch < batch_size:
            raise ValueError(
                f"defects_per_batch must be in [1, batch_size={batch_size}), got {defects_per_batch}"
            )
        if self.defective.numel() == 0:
            raise ValueError("defects_per_batch needs defective images in the training set, and it has none")
        if self.normal.numel() == 0:
            raise ValueError("the training set has no normal image")
        self.batch_size = batch_size
        self.defects_per_batch = defects_per_batch
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(self.normal.numel() / (self.batch_size - self.defects_per_batch))

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        normal = self.normal[torch.randperm(self.normal.numel(), generator=generator)]
        queue = torch.empty(0, dtype=torch.long)
        step = self.batch_size - self.defects_per_batch
        for start in range(0, normal.numel(), step):
            while queue.numel() < self.defects_per_batch:
                queue = torch.cat([queue, self.defective[torch.randperm(self.defective.numel(), generator=generator)]])
            defects, queue = queue[: self.defects_per_batch], queue[self.defects_per_batch :]
            batch = torch.cat([normal[start : start + step], defects])
            yield batch[torch.randperm(batch.numel(), generator=generator)].tolist()


class _ColdStart:
    """The cold-start split applied to the samples anomalib's datamodule lists (mixed into a datamodule class)."""

    category_name: str

    def _init_cold_start(
        self,
        split: Mapping[str, Any] | PathLike | None,
        split_category: str | None,
        train_defects: bool,
        defects_per_batch: int,
        sampler_seed: int,
    ) -> None:
        if not isinstance(defects_per_batch, int) or defects_per_batch < 0:
            raise ValueError(f"defects_per_batch must be an int >= 0, got {defects_per_batch!r}")
        if defects_per_batch and not train_defects:
            raise ValueError("defects_per_batch needs train_defects=True")
        self.split = split
        self.split_category = split_category
        self.train_defects = train_defects
        self.defects_per_batch = defects_per_batch
        self.sampler_seed = sampler_seed

    def _manifest(self) -> Mapping[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _cold_start_samples(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Path]:
        manifest = self._manifest()
        categories = manifest["categories"]
        name = self.split_category
        if name is None:
            if len(categories) != 1:
                raise ValueError(f"the split holds several categories {sorted(categories)}: pass split_category")
            name = next(iter(categories))
        if name not in categories:
            raise ValueError(f"the split has no category {name!r}; it has {sorted(categories)}")
        entry = categories[name]
        return list(entry["train"]), list(entry["test"]), Path(manifest["root"])

    def _setup(self, _stage: str | None = None) -> None:
        import pandas as pd

        super()._setup(_stage)  # type: ignore[misc]
        train, test, root = self._cold_start_samples()
        listed = pd.concat([self.train_data.samples, self.test_data.samples], ignore_index=True)
        by_path = {str(Path(p).resolve()): i for i, p in enumerate(listed.image_path)}

        def rows(records: list[dict[str, Any]]) -> pd.DataFrame:
            missing = [r["image"] for r in records if str((root / r["image"]).resolve()) not in by_path]
            if missing:
                raise ValueError(
                    f"{len(missing)} image(s) of the cold-start split are not among the images anomalib lists for "
                    f"this datamodule, e.g. {missing[:3]}: the split was made for another data set or root"
                )
            frame = listed.iloc[[by_path[str((root / r["image"]).resolve())] for r in records]].copy()
            frame["label_index"] = [int(r["label"]) for r in records]
            frame["mask_path"] = [str(root / r["mask"]) if r.get("mask") else "" for r in records]
            return frame.reset_index(drop=True)

        train_frame = rows(train)
        test_frame = rows(test)
        if not self.train_defects:
            train_frame = train_frame[train_frame.label_index == 0].reset_index(drop=True)
        train_frame["split"] = "train"
        test_frame["split"] = "test"
        for frame in (train_frame, test_frame):
            frame.attrs["task"] = "segmentation"
        self.train_data.samples = train_frame
        self.test_data.samples = test_frame

    def train_dataloader(self) -> DataLoader:
        """anomalib's shuffled loader, or with ``defects_per_batch`` a :class:`DefectBatchSampler`'s batches."""
        if not self.defects_per_batch:
            return super().train_dataloader()  # type: ignore[misc]
        sampler = DefectBatchSampler(
            list(self.train_data.samples.label_index),
            self.train_batch_size,  # type: ignore[attr-defined]
            self.defects_per_batch,
            self.sampler_seed,
        )
        return DataLoader(
            dataset=self.train_data,
            batch_sampler=sampler,
            num_workers=self.num_workers,  # type: ignore[attr-defined]
            collate_fn=self.external_collate_fn or self.train_data.collate_fn,  # type: ignore[attr-defined]
        )


class ColdStartMVTecAD(_ColdStart, MVTecAD):
    """anomalib's ``MVTecAD`` datamodule on the cold-start split (section 4.1) of one category.

    anomalib lists the category's images as usual; the split then decides which go to training and which to
    testing: ``normal_fraction`` of ``train/good`` plus defective images with their masks (``anomaly_ratio`` of the
    new training set) for training, everything else for testing (validation: the test set, as ``MVTecAD``). The
    split is :func:`torch_arcad.coldstart.make_split` of ``root`` for ``category``, or a given manifest.

    Args:
        root, category, train_batch_size, eval_batch_size, num_workers, *_augmentations, test_split_mode,
        test_split_ratio, val_split_mode, val_split_ratio, seed: as anomalib's ``MVTecAD``.
        split: ``None`` (make it here), a manifest dict, or the path of a manifest written by
            ``python -m torch_arcad.coldstart``.
        normal_fraction, anomaly_ratio, split_seed: :func:`~torch_arcad.coldstart.make_split`'s (paper: 0.3, 0.10).
        train_defects: put the split's defective images in training (``False``: its normal images only, the
            baseline's training set; the test set is the same either way).
        defects_per_batch: 0 (anomalib's shuffle) or the number of defective images in every training batch.
        sampler_seed: seed of :class:`DefectBatchSampler`.
    """

    def __init__(
        self,
        root: PathLike = "./datasets/MVTecAD",
        category: str = "bottle",
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 8,
        train_augmentations: Any = None,
        val_augmentations: Any = None,
        test_augmentations: Any = None,
        augmentations: Any = None,
        test_split_mode: str = "from_dir",
        test_split_ratio: float = 0.2,
        val_split_mode: str = "same_as_test",
        val_split_ratio: float = 0.5,
        seed: int | None = None,
        *,
        split: Mapping[str, Any] | PathLike | None = None,
        normal_fraction: float = 0.3,
        anomaly_ratio: float = 0.1,
        split_seed: int = 0,
        train_defects: bool = True,
        defects_per_batch: int = 0,
        sampler_seed: int = 0,
    ) -> None:
        super().__init__(
            root=root,
            category=category,
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
            augmentations=augmentations,
            test_split_mode=test_split_mode,
            test_split_ratio=test_split_ratio,
            val_split_mode=val_split_mode,
            val_split_ratio=val_split_ratio,
            seed=seed,
        )
        self.normal_fraction = normal_fraction
        self.anomaly_ratio = anomaly_ratio
        self.split_seed = split_seed
        self._init_cold_start(split, category, train_defects, defects_per_batch, sampler_seed)

    def _manifest(self) -> Mapping[str, Any]:
        if self.split is None:
            self.split = make_split(
                self.root,
                categories=[self.category],
                normal_fraction=self.normal_fraction,
                anomaly_ratio=self.anomaly_ratio,
                seed=self.split_seed,
            )
        return self.split if isinstance(self.split, Mapping) else load_split(self.split)


class ColdStartFolder(_ColdStart, Folder):
    """anomalib's ``Folder`` datamodule on a cold-start split manifest (``python -m torch_arcad.coldstart``).

    ``Folder`` lists the images of its directories (``normal_dir``, ``abnormal_dir``, ``normal_test_dir``,
    ``mask_dir``, as in anomalib); the manifest decides which go to training (with their masks) and which to
    testing, as in :class:`ColdStartMVTecAD`. Every image of the manifest's category must be among them.

    Args:
        name, normal_dir, root, abnormal_dir, normal_test_dir, mask_dir, extensions, train_batch_size,
        eval_batch_size, num_workers, ...: as anomalib's ``Folder``.
        split: a manifest dict or its path.
        split_category: the manifest's category to use (default: its only one).
        train_defects, defects_per_batch, sampler_seed: as :class:`ColdStartMVTecAD`.
    """

    def __init__(
        self,
        name: str,
        normal_dir: PathLike | Sequence[PathLike],
        *args: Any,
        split: Mapping[str, Any] | PathLike,
        split_category: str | None = None,
        train_defects: bool = True,
        defects_per_batch: int = 0,
        sampler_seed: int = 0,
        val_split_mode: str = "same_as_test",
        **kwargs: Any,
    ) -> None:
        super().__init__(name, normal_dir, *args, val_split_mode=val_split_mode, **kwargs)
        self._init_cold_start(split, split_category, train_defects, defects_per_batch, sampler_seed)

    def _manifest(self) -> Mapping[str, Any]:
        return self.split if isinstance(self.split, Mapping) else load_split(self.split)
