"""RD4AD-style detector + ArcAD on a cold-start split.

RD4AD (Deng & Li, "Anomaly Detection via Reverse Distillation from One-Class Embedding", CVPR 2022):

* encoder: frozen CNN, feature maps at strides 4, 8, 16 (Wide-ResNet-50-2 ``layer1``-``layer3`` in the paper;
  offline default: EfficientNet-Lite0 from its packaged checkpoint);
* bottleneck: OCBE, multi-scale fusion + one-class embedding, giving ``z`` as a (B, D, h, w) map
  (2048 x 8 x 8 at 256 px for Wide-ResNet-50-2; 256 x 16 x 16 for EfficientNet-Lite0);
* decoder: a reverse ResNet that reconstructs the three encoder maps from ``z``;
* loss: ``1 - cos`` between encoder and decoder features at every position, averaged per layer, summed;
* anomaly map: the per-layer ``1 - cos`` maps upsampled to the image and summed, Gaussian blur sigma 4;
  image score: the map's maximum.

ArcAD calibrates ``z`` directly: a (B, D, h, w) map, no prefix tokens; masks (B, H, W) and labels (B,) are the
batch's own. The decoder learns from normal images only: the reconstruction loss weights each image by
``labels == 0``.

Usage::

    python examples/rd4ad.py                         # generated synthetic data, +ArcAD, figures in runs/rd4ad
    python examples/rd4ad.py --compare               # baseline and +ArcAD side by side
    python examples/rd4ad.py --data-root /data/mvtec --categories bottle --split split.json \\
        --encoder wide_resnet50_2 --weights wide_resnet50_2-95faca4d.pth --steps 10000
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

import torch_arcad

from ..config import BETAS, ExperimentConfig
from ..data import Batch
from ..detector import Detector, Reconstruction, Setup, StepOutput, arcad_kwargs, decoded_rows, finish_step
from ..detector import inference_maps, missed_only
from ..encoders import CNNFeatures, build_cnn
from ..losses import pixel_cosine_loss
from ..maps import cosine_distance_map, max_score, upsample
from ..ocbe import LAYOUTS, OCBE, OCBELayout, ReverseDecoder, batch_statistics_from
from .registry import register_detector


class RD4AD(Detector):
    """Frozen encoder -> OCBE bottleneck -> reverse decoder.

    Args:
        encoder: a frozen :class:`~arcad_harness.encoders.CNNFeatures`.
        layout: sizes of the bottleneck and decoder (:data:`arcad_harness.ocbe.LAYOUTS`).
    """

    def __init__(self, encoder: CNNFeatures, layout: OCBELayout) -> None:
        super().__init__()
        self.encoder = encoder
        self.bottleneck = OCBE(encoder.channels, layout)
        self.decoder = ReverseDecoder(layout.dim, encoder.channels, layout)
        self.bottleneck_dim = layout.dim

    def frozen(self) -> list[torch.nn.Module]:
        """The encoder stays in eval mode."""
        return [self.encoder]

    def forward(
        self, images: Tensor, *, features: list[Tensor] | None = None, decode: Tensor | None = None
    ) -> Reconstruction:
        """Images (B, 3, H, W) in [0, 1] -> encoder maps, their reconstructions and z (B, D, h, w).

        ``features``: the cached :meth:`encode` of ``images``; ``decode``: bool (B,), the images the decoder sees
        (targets and reconstructions are theirs only, and the bottleneck's BatchNorm statistics come from them);
        ``z`` covers every image.
        """
        if features is None:
            features = self.encode(images)
        rows = decoded_rows(decode, images.shape[0])
        with batch_statistics_from(self.bottleneck, rows):  # BatchNorm statistics of the decoded images only
            z = self.bottleneck(features)
        if rows is not None:
            features = [f[rows] for f in features]
            if rows.numel() == 0:  # no image to decode: empty reconstructions, a zero loss
                return Reconstruction(features, [f.clone() for f in features], z)
        return Reconstruction(features, self.decoder(z if rows is None else z[rows]), z)

    def reconstruction_loss(self, rec: Reconstruction, progress: float) -> Tensor:
        """Sum over the three layers of the mean ``1 - cos`` per position, averaged over the decoded images."""
        decoded = rec.targets[0].shape[0]
        if decoded == 0:  # a batch without a normal image
            return rec.z.new_zeros(())
        return pixel_cosine_loss(rec.targets, rec.reconstructions, rec.z.new_ones(decoded))

    def anomaly_map(self, rec: Reconstruction, size: tuple[int, int]) -> Tensor:
        """Sum over the three layers of ``1 - cos`` upsampled to ``size``: (B, H, W)."""
        maps = [upsample(cosine_distance_map(t, r), size) for t, r in zip(rec.targets, rec.reconstructions)]
        return torch.stack(maps).sum(dim=0)

    def image_score(self, maps: Tensor) -> Tensor:
        """The maximum of each blurred map: (B, H, W) -> (B,)."""
        return max_score(maps)


def build(cfg: ExperimentConfig) -> Setup:
    """The model, AdamW (the paper's settings) and, with ``cfg.arcad``, ArcAD in its own parameter group."""
    layout = LAYOUTS[cfg.encoder]
    if cfg.width is not None:
        layout = dataclasses.replace(layout, dim=cfg.width)
    model = RD4AD(build_cnn(cfg.encoder, cfg.weights), layout).to(cfg.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, betas=BETAS, weight_decay=cfg.weight_decay)
    arcad = None
    if cfg.arcad:
        arcad = torch_arcad.ArcAD(model.bottleneck_dim, **arcad_kwargs(cfg, model)).to(cfg.device)  # ArcAD 1/3
        optimizer.add_param_group({"params": list(arcad.parameters())})  # ArcAD 2/3: the discriminator
    return Setup(model, optimizer, arcad)


def train_step(
    model: RD4AD,
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
        scores = inference_maps(model, batch, rec.z) if missed_only(arcad) else None
        calibration = arcad(rec.z, masks=masks, labels=labels, scores=scores)  # z: (B, D, h, w), the whole batch
        loss = loss_recon + calibration.loss  # ArcAD 3/3
    return finish_step(model, arcad, optimizer, loss, loss_recon, calibration, diagnose=diagnose)


SPEC = register_detector(
    "rd4ad",
    build=build,
    train_step=train_step,
    model=RD4AD,
    description=(
        "RD4AD-style (modelled on RD4AD, Deng & Li 2022): "
        "frozen CNN, OCBE bottleneck, reverse decoder"
    ),
)
