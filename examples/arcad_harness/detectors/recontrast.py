"""ReContrast-style detector + ArcAD on a cold-start split.

ReContrast (Guo et al., "ReContrast: Domain-Specific Anomaly Detection via Contrastive Reconstruction",
NeurIPS 2023):

* two encoders: a trainable copy of the CNN (small learning rate, 1e-5, BatchNorm statistics frozen) and the frozen
  original, both giving feature maps at strides 4, 8, 16 (Wide-ResNet-50-2 in the paper; offline default:
  EfficientNet-Lite0 from its packaged checkpoint);
* bottleneck: RD4AD's OCBE, shared: the two branches' features are stacked along the batch, so ``z`` is a
  (2B, D, h, w) map (trainable branch first);
* decoder: RD4AD's reverse decoder on both halves, with one 1x1 output head per branch;
* contrastive reconstruction: each branch's decoding reconstructs the *other* encoder's features (the trainable
  branch's decoding the frozen features and vice versa), which keeps the trainable encoder from collapsing;
  loss: global cosine distance per layer with stop-gradient on the targets and hard mining (positions below
  ``mean + alpha * std`` of the distances get no gradient; ``alpha`` rises from -3 to 1 over the first 10% of
  the steps), the mean of the two branches;
* anomaly map: the sum over both branches and the three layers of ``1 - cos``, upsampled, Gaussian blur sigma 4;
  image score: the map's maximum.

ArcAD calibrates the stacked ``z`` (2B, D, h, w): the masks and labels follow the stacking,
``masks.repeat(2, 1, 1)`` and ``labels.repeat(2)``. Its prototype and discriminator maps are averaged over the two
branches at evaluation.

Usage::

    python examples/recontrast.py                    # generated synthetic data, +ArcAD
    python examples/recontrast.py --compare
    python examples/recontrast.py --data-root /data/mvtec --encoder wide_resnet50_2 --weights wrn50.pth
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

import torch_arcad

from ..config import BETAS, ExperimentConfig
from ..data import Batch
from ..detector import Detector, Reconstruction, Setup, StepOutput, arcad_kwargs, decoded_rows, finish_step
from ..detector import inference_maps, missed_only
from ..encoders import CNNFeatures, build_cnn, trainable_copy
from ..losses import global_cosine_loss
from ..maps import cosine_distance_map, max_score, upsample
from ..ocbe import LAYOUTS, OCBE, OCBELayout, ReverseDecoder, batch_statistics_from
from .registry import register_detector

#: Learning rate of the trainable encoder (ReContrast's own).
ENCODER_LR: float = 1e-5
#: Hard mining: ``alpha`` rises linearly from -3 to 1 over the first 10% of the steps; easy positions get factor 0.
ALPHA_START: float = -3.0
ALPHA_FINAL: float = 1.0
ALPHA_WARMUP: float = 0.1
HARD_MINING_FACTOR: float = 0.0
#: Two branches: the trainable encoder and the frozen one.
BRANCHES: int = 2


class ReContrast(Detector):
    """Trainable + frozen encoder -> shared OCBE on the stacked branches -> reverse decoder with two heads.

    Args:
        encoder: a frozen :class:`~arcad_harness.encoders.CNNFeatures` (copied for the trainable branch).
        layout: sizes of the bottleneck and decoder (:data:`arcad_harness.ocbe.LAYOUTS`).
    """

    branches = BRANCHES

    def __init__(self, encoder: CNNFeatures, layout: OCBELayout) -> None:
        super().__init__()
        self.encoder = trainable_copy(encoder)
        self.encoder_frozen = encoder
        self.bottleneck = OCBE(encoder.channels, layout)
        self.decoder = ReverseDecoder(layout.dim, encoder.channels, layout, heads=BRANCHES)
        self.bottleneck_dim = layout.dim

    def frozen(self) -> list[nn.Module]:
        """Both encoders stay in eval mode: the trainable one's weights train, its BatchNorm statistics do not."""
        return [self.encoder, self.encoder_frozen]

    def frozen_encoder(self) -> nn.Module:
        """The frozen branch's encoder (the trainable copy runs at every step)."""
        return self.encoder_frozen

    def forward(
        self, images: Tensor, *, features: list[Tensor] | None = None, decode: Tensor | None = None
    ) -> Reconstruction:
        """Images (B, 3, H, W) -> six target / reconstruction pairs and z (2B, D, h, w).

        ``features``: the cached :meth:`encode` of ``images`` (the frozen branch); ``decode``: bool (B,), the
        images the decoder sees, on both branches (targets and reconstructions are theirs only); ``z`` covers every
        image of both branches.
        """
        trainable = self.encoder(images)
        frozen = self.encode(images) if features is None else features
        batch = images.shape[0]
        rows = decoded_rows(decode, batch)
        stacked_rows = None if rows is None else torch.cat([rows, rows + batch])  # the same images, both branches
        with batch_statistics_from(self.bottleneck, stacked_rows):  # BatchNorm statistics of the decoded images
            z = self.bottleneck([torch.cat([t, f]) for t, f in zip(trainable, frozen)])  # (2B, D, h, w)
        z_decoded = z
        if rows is not None:
            trainable, frozen = [t[rows] for t in trainable], [f[rows] for f in frozen]
            if rows.numel() == 0:  # no image to decode: empty reconstructions, a zero loss
                return Reconstruction(frozen + trainable, [t.detach().clone() for t in frozen + trainable], z)
            z_decoded, batch = z[stacked_rows], rows.numel()
        outputs = self.decoder(z_decoded)  # head 0 (3 maps), then head 1 (3 maps), each (2M, C, h_l, w_l)
        from_trainable = [o[:batch] for o in outputs[:3]]  # head 0 on the trainable branch's half
        from_frozen = [o[batch:] for o in outputs[3:]]  # head 1 on the frozen branch's half
        # Cross reconstruction: the trainable branch's decoding targets the frozen features, and vice versa.
        return Reconstruction(frozen + trainable, from_trainable + from_frozen, z)

    def reconstruction_loss(self, rec: Reconstruction, progress: float) -> Tensor:
        """Mean over the two branches of the hard-mined global cosine loss summed over the layers, averaged over
        the decoded images."""
        decoded = rec.targets[0].shape[0]
        if decoded == 0:  # a batch without a normal image
            return rec.z.new_zeros(())
        alpha = min(ALPHA_START + (ALPHA_FINAL - ALPHA_START) * progress / ALPHA_WARMUP, ALPHA_FINAL)
        t, r, weights = rec.targets, rec.reconstructions, rec.z.new_ones(decoded)
        frozen_targets = global_cosine_loss(t[:3], r[:3], weights, alpha=alpha, factor=HARD_MINING_FACTOR)
        trainable_targets = global_cosine_loss(t[3:], r[3:], weights, alpha=alpha, factor=HARD_MINING_FACTOR)
        return (frozen_targets + trainable_targets) / BRANCHES

    def anomaly_map(self, rec: Reconstruction, size: tuple[int, int]) -> Tensor:
        """Sum over both branches and three layers of ``1 - cos`` upsampled to ``size``: (B, H, W)."""
        maps = [upsample(cosine_distance_map(t, r), size) for t, r in zip(rec.targets, rec.reconstructions)]
        return torch.stack(maps).sum(dim=0)

    def image_score(self, maps: Tensor) -> Tensor:
        """The maximum of each blurred map: (B, H, W) -> (B,)."""
        return max_score(maps)


def build(cfg: ExperimentConfig) -> Setup:
    """The model, AdamW (the paper's settings; ReContrast's 1e-5 for the trainable encoder) and, with
    ``cfg.arcad``, ArcAD in its own parameter group."""
    layout = LAYOUTS[cfg.encoder]
    if cfg.width is not None:
        layout = dataclasses.replace(layout, dim=cfg.width)
    model = ReContrast(build_cnn(cfg.encoder, cfg.weights), layout).to(cfg.device)
    groups = [
        {"params": list(model.bottleneck.parameters()) + list(model.decoder.parameters())},
        {"params": list(model.encoder.parameters()), "lr": ENCODER_LR},
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=BETAS, weight_decay=cfg.weight_decay)
    arcad = None
    if cfg.arcad:
        arcad = torch_arcad.ArcAD(model.bottleneck_dim, **arcad_kwargs(cfg, model)).to(cfg.device)  # ArcAD 1/3
        optimizer.add_param_group({"params": list(arcad.parameters())})  # ArcAD 2/3: the discriminator
    return Setup(model, optimizer, arcad)


def train_step(
    model: ReContrast,
    arcad: torch_arcad.ArcAD | None,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    progress: float,
    *,
    diagnose: bool = False,
) -> StepOutput:
    """One optimiser step on a batch of normal and defective images (``diagnose``: measure each term's gradient
    on the bottleneck first, :func:`~arcad_harness.detector.term_gradients`)."""
    images, masks, labels = batch.images, batch.masks, batch.labels
    # z for every image; the decoder sees the normal images only (its loss and its BatchNorm statistics)
    rec = model(images, features=batch.features, decode=labels == 0)
    loss_recon = model.reconstruction_loss(rec, progress)
    loss, calibration = loss_recon, None
    if arcad is not None:
        # z stacks the two branches, (2B, D, h, w): masks and labels follow the stacking.
        scores = inference_maps(model, batch, rec.z) if missed_only(arcad) else None
        calibration = arcad(
            rec.z, masks=masks.repeat(BRANCHES, 1, 1), labels=labels.repeat(BRANCHES), scores=scores
        )
        loss = loss_recon + calibration.loss  # ArcAD 3/3
    return finish_step(model, arcad, optimizer, loss, loss_recon, calibration, diagnose=diagnose)


SPEC = register_detector(
    "recontrast",
    build=build,
    train_step=train_step,
    model=ReContrast,
    description=(
        "ReContrast-style (modelled on ReContrast, Guo et al. 2023): "
        "trainable and frozen CNN, shared OCBE, contrastive reconstruction"
    ),
)
