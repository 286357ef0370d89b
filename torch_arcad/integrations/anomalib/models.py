"""anomalib's ``ReverseDistillation`` and ``Dinomaly`` with ArcAD attached, and the training helpers they share.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn


from anomalib.models import Dinomaly, ReverseDistillation
from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode

from torch_arcad import ArcAD, ArcADOutput

from .weights import RANDOM_WEIGHTS, timm_weights

PathLike = Union[str, "os.PathLike[str]"]


#: Names under which the training step logs ArcAD's terms (Lightning ``self.log``).
LOGGED_TERMS = ("train_loss", "train_recon_loss", "arcad_loss", "arcad_spm", "arcad_dgc", "arcad_cls")


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
        scores = self._inference_map(batch.image) if self.arcad.config.calibrate == "missed" else None
        out: ArcADOutput = self.arcad(z, masks=masks, labels=labels, scores=scores)
        loss = recon + out.loss
        size = batch.image.shape[0]
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        self.log("train_recon_loss", recon.detach(), on_step=True, on_epoch=True, batch_size=size)
        self.log("arcad_loss", out.loss.detach(), on_step=True, on_epoch=True, batch_size=size)
        self.log("arcad_spm", out.spm.detach(), on_step=True, on_epoch=True, batch_size=size)
        self.log("arcad_dgc", out.dgc.detach(), on_step=True, on_epoch=True, batch_size=size)
        self.log("arcad_cls", out.cls.detach(), on_step=True, on_epoch=True, batch_size=size)
        return {"loss": loss}

    @torch.no_grad()
    def _inference_map(self, images: Tensor) -> Tensor:
        """anomalib's anomaly map of ``images`` as at inference (eval mode, no gradient): (B, 1, H, W), what
        ``calibrate="missed"`` compares the defects with the normal images by."""
        was_training = self.model.training
        self.model.eval()
        try:
            return self.model(images).anomaly_map
        finally:
            self.model.train(was_training)

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


