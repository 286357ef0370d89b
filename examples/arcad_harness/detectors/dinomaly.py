"""Dinomaly-style detector + ArcAD on a cold-start split (the paper's main baseline).

Dinomaly (Guo et al., "Dinomaly: The Less Is More Philosophy in Multi-Class Unsupervised Anomaly Detection",
CVPR 2025):

* encoder: frozen DINOv2-with-registers ViT-B/14, the tokens of blocks 2..9 at 392 px (28 x 28 patches plus the
  class token and 4 registers), when run with ``--encoder dinov2_vitb14_reg --weights PATH``;
* bottleneck: the mean of the encoder layers through a noisy MLP (dropout 0.2 on its input, hidden layer and
  output): ``z`` is (B, 1 + 4 + 784, 768) tokens;
* decoder: as many transformer blocks as encoder layers, with linear attention;
* loose reconstruction: encoder and decoder layers are averaged in two groups (blocks 2-5 and 6-9; the decoder's
  outputs in reverse order), prefix tokens dropped; loss: global cosine distance per group with hard mining (the
  gradient of positions below the ``p`` quantile of the distances is scaled by 0.1, ``p`` rising to 0.9 over the
  first 10% of the steps), averaged over the groups;
* anomaly map: ``1 - cos`` per group, upsampled to the image and averaged, Gaussian blur sigma 4; image score: the
  mean of the top 1% of the map.

Offline default (no download): the same model on the frozen EfficientNet-Lite0's features as tokens. Its maps at
strides 4, 8, 16 are pooled to the stride-16 grid and written into disjoint channel slices of a 176-channel token
(24 + 40 + 112), one "layer" per stride, each with a prepended global-mean token standing in for the class token
(``prefix_tokens = 1``); groups: strides 4 + 8 and stride 16.

ArcAD calibrates ``z``, the bottleneck's tokens, with ``prefix_tokens`` set to the encoder's (5 for DINOv2-reg, 1
offline); masks (B, H, W) and labels (B,) are the batch's own.

Usage::

    python examples/dinomaly.py                      # generated synthetic data, CNN tokens, +ArcAD
    python examples/dinomaly.py --compare --setting multi
    python examples/dinomaly.py --data-root /data/mvtec --setting multi --encoder dinov2_vitb14_reg \\
        --weights dinov2_vitb14_reg4_pretrain.pth --steps 10000 --device cuda
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import torch_arcad

from ..config import BETAS, VIT_ENCODERS, ExperimentConfig
from ..data import Batch
from ..detector import Detector, Reconstruction, Setup, StepOutput, arcad_kwargs, decoded_rows, finish_step
from ..detector import inference_maps, missed_only
from ..encoders import CNNTokens, ViTTokens, build_cnn, build_vit
from ..losses import global_cosine_loss
from ..maps import cosine_distance_map, top_fraction_score, upsample
from ..transformer import MLP_RATIO, DecoderBlock, NoisyBottleneck, init_linear
from .registry import register_detector

#: Hard mining: the final quantile ``p``, reached after this fraction of the steps, and the gradient factor of the
#: easy positions (Dinomaly: 0.9 after 1,000 of 10,000 iterations, factor 0.1).
HARD_MINING_P: float = 0.9
HARD_MINING_WARMUP: float = 0.1
HARD_MINING_FACTOR: float = 0.1
#: Attention heads: one per 64 channels (12 for ViT-B).
HEAD_DIM: int = 64


def _num_heads(dim: int) -> int:
    heads = max(1, dim // HEAD_DIM)
    while dim % heads:
        heads -= 1
    return heads


class Dinomaly(Detector):
    """Frozen token encoder -> noisy MLP bottleneck -> linear-attention decoder, loose reconstruction.

    Args:
        encoder: :class:`~arcad_harness.encoders.ViTTokens` or :class:`~arcad_harness.encoders.CNNTokens`.
        hidden_dim: hidden width of the bottleneck MLP (Dinomaly: 4 D).
    """

    def __init__(self, encoder: ViTTokens | CNNTokens, hidden_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        dim, layers = encoder.dim, encoder.num_layers
        self.bottleneck = NoisyBottleneck(dim, hidden_dim)
        self.decoder = nn.ModuleList(DecoderBlock(dim, _num_heads(dim)) for _ in range(layers))
        half = (layers + 1) // 2
        self.groups = [list(range(half)), list(range(half, layers))]
        self.bottleneck_dim = dim
        self.prefix_tokens = encoder.prefix_tokens
        self.bottleneck.apply(init_linear)
        self.decoder.apply(init_linear)

    def frozen(self) -> list[nn.Module]:
        """The encoder stays in eval mode."""
        return [self.encoder]

    def _group_maps(self, layers: list[Tensor]) -> list[Tensor]:
        """Average each group of (B, prefix + h * w, D) layers, drop the prefix tokens -> (B, D, h, w) maps."""
        maps = []
        for group in self.groups:
            tokens = torch.stack([layers[i] for i in group]).mean(dim=0)[:, self.prefix_tokens :]
            side = int(round(tokens.shape[1] ** 0.5))
            maps.append(tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side))
        return maps

    def forward(
        self, images: Tensor, *, features: list[Tensor] | None = None, decode: Tensor | None = None
    ) -> Reconstruction:
        """Images (B, 3, H, W) in [0, 1] -> grouped encoder / decoder maps and z (B, prefix + h * w, D).

        ``features``: the cached :meth:`encode` of ``images``; ``decode``: bool (B,), the images the decoder sees
        (targets and reconstructions are theirs only); ``z`` covers every image.
        """
        encoded = self.encode(images) if features is None else features
        z = self.bottleneck(torch.stack(encoded).mean(dim=0))  # fuse all encoder layers, then the noisy MLP
        rows = decoded_rows(decode, images.shape[0])
        x = z
        if rows is not None:
            encoded, x = [e[rows] for e in encoded], z[rows]
            if rows.numel() == 0:  # no image to decode: empty reconstructions, a zero loss
                targets = self._group_maps(encoded)
                return Reconstruction(targets, [t.clone() for t in targets], z)
        decoded = []
        for block in self.decoder:
            x = block(x)
            decoded.append(x)
        decoded = decoded[::-1]  # the last decoder block pairs with the first encoder layer
        return Reconstruction(self._group_maps(encoded), self._group_maps(decoded), z)

    def reconstruction_loss(self, rec: Reconstruction, progress: float) -> Tensor:
        """Hard-mined global cosine loss averaged over the two groups (``p`` warms up with ``progress``), averaged
        over the decoded images."""
        decoded = rec.targets[0].shape[0]
        if decoded == 0:  # a batch without a normal image
            return rec.z.new_zeros(())
        p = min(HARD_MINING_P * progress / HARD_MINING_WARMUP, HARD_MINING_P)
        weights = rec.z.new_ones(decoded)
        loss = global_cosine_loss(rec.targets, rec.reconstructions, weights, p=p, factor=HARD_MINING_FACTOR)
        return loss / len(rec.targets)

    def anomaly_map(self, rec: Reconstruction, size: tuple[int, int]) -> Tensor:
        """Mean over the two groups of ``1 - cos`` upsampled to ``size``: (B, H, W)."""
        maps = [upsample(cosine_distance_map(t, r), size) for t, r in zip(rec.targets, rec.reconstructions)]
        return torch.stack(maps).mean(dim=0)

    def image_score(self, maps: Tensor) -> Tensor:
        """The mean of the top 1% of each blurred map: (B, H, W) -> (B,)."""
        return top_fraction_score(maps)


def build(cfg: ExperimentConfig) -> Setup:
    """The model, AdamW (the paper's settings) and, with ``cfg.arcad``, ArcAD in its own parameter group."""
    if cfg.encoder in VIT_ENCODERS:
        encoder: ViTTokens | CNNTokens = build_vit(cfg.encoder, cfg.weights)
    else:
        encoder = CNNTokens(build_cnn(cfg.encoder, cfg.weights))
    model = Dinomaly(encoder, cfg.width or MLP_RATIO * encoder.dim).to(cfg.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, betas=BETAS, weight_decay=cfg.weight_decay)
    arcad = None
    if cfg.arcad:
        # z holds prefix tokens (class + registers, or the global-mean token): ArcAD drops them.
        arcad = torch_arcad.ArcAD(model.bottleneck_dim, **arcad_kwargs(cfg, model)).to(cfg.device)  # ArcAD 1/3
        optimizer.add_param_group({"params": list(arcad.parameters())})  # ArcAD 2/3: the discriminator
    return Setup(model, optimizer, arcad)


def train_step(
    model: Dinomaly,
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
    # z for every image; the decoder sees the normal images only
    rec = model(images, features=batch.features, decode=labels == 0)
    loss_recon = model.reconstruction_loss(rec, progress)
    loss, calibration = loss_recon, None
    if arcad is not None:
        scores = inference_maps(model, batch, rec.z) if missed_only(arcad) else None
        calibration = arcad(rec.z, masks=masks, labels=labels, scores=scores)  # z: (B, prefix + h * w, D) tokens
        loss = loss_recon + calibration.loss  # ArcAD 3/3
    return finish_step(model, arcad, optimizer, loss, loss_recon, calibration, diagnose=diagnose)


SPEC = register_detector(
    "dinomaly",
    build=build,
    train_step=train_step,
    model=Dinomaly,
    description=(
        "Dinomaly-style (modelled on Dinomaly, Guo et al. 2025): "
        "frozen token encoder, noisy MLP bottleneck, linear-attention decoder"
    ),
)
