"""What the harness expects from a detector: the :class:`Detector` interface and the objects a detector's
``build`` and ``train_step`` return.

A detector (a module of :mod:`arcad_harness.detectors`, or your own, registered with
:func:`~arcad_harness.detectors.register_detector`) defines:

* a :class:`Detector` subclass (encoder, bottleneck, decoder, reconstruction loss, anomaly map, image score);
* ``build(cfg) -> Setup``: the model, its optimiser and, with ``cfg.arcad``, the ArcAD module with its own
  parameter group;
* ``train_step(model, arcad, optimizer, batch, progress) -> StepOutput``: one optimiser step.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor, nn

import torch_arcad
from torch_arcad.layout import features_to_patches

from .cache import FeatureStore, encoder_digest
from .data import Batch
from .config import ExperimentConfig, default_num_prototypes

if TYPE_CHECKING:
    from .detectors.registry import DetectorSpec

__all__ = [
    "Detector",
    "Reconstruction",
    "Setup",
    "StepOutput",
    "arcad_kwargs",
    "finish_step",
    "term_gradients",
    "decoded_rows",
    "with_features",
    "init_prototypes_from_features",
    "load_example",
    "num_prototypes",
    "inference_maps",
]

#: At most this many features per prototype enter the offline k-means.
KMEANS_FEATURES_PER_PROTOTYPE: int = 64


class Reconstruction(NamedTuple):
    """One forward pass of a detector.

    Attributes:
        targets: encoder features the decoder must reproduce, one (B', C_l, h_l, w_l) map per layer or group.
        reconstructions: the decoder's maps, same shapes.
        z: the bottleneck output for the whole batch, what ArcAD calibrates: (B', D, h, w) maps or
            (B', prefix + h * w, D) tokens. ``B' = branches * B``.
    """

    targets: list[Tensor]
    reconstructions: list[Tensor]
    z: Tensor


class Detector(nn.Module):
    """A reconstruction-based detector: frozen encoder, trainable bottleneck and decoder.

    Subclasses set :attr:`bottleneck_dim`, :attr:`prefix_tokens` and :attr:`branches`, keep their frozen modules in
    :attr:`frozen` (eval mode whatever ``train()`` says), override :meth:`frozen_encoder` when the frozen encoder is
    not their ``encoder`` attribute, and implement :meth:`forward`,
    :meth:`reconstruction_loss`, :meth:`anomaly_map` and :meth:`image_score`.
    """

    #: Channels / token width D of the bottleneck output ``z``.
    bottleneck_dim: int
    #: Leading non-patch tokens of a token ``z`` (0 for maps).
    prefix_tokens: int = 0
    #: How many copies of the batch ``z`` stacks (ReContrast: 2, one per encoder).
    branches: int = 1

    def frozen(self) -> list[nn.Module]:
        """Modules that stay in eval mode during training (frozen encoders, BatchNorm statistics)."""
        return []

    def train(self, mode: bool = True) -> Detector:
        """Set the training mode, keeping the modules of :meth:`frozen` in eval mode."""
        super().train(mode)
        for module in self.frozen():
            module.eval()
        return self

    @torch.no_grad()
    def encode(self, images: Tensor) -> list[Tensor]:
        """The frozen encoder's output for images float (B, 3, H, W) in [0, 1]: one (B, ...) tensor per layer.

        Each image is encoded independently (eval mode, no gradient), so the output can be computed once per image
        and reused (:mod:`arcad_harness.cache`).
        """
        return self.frozen_encoder()(images)

    def forward(
        self, images: Tensor, *, features: list[Tensor] | None = None, decode: Tensor | None = None
    ) -> Reconstruction:
        """RGB images float (B, 3, H, W) in [0, 1] -> :class:`Reconstruction`.

        Args:
            images: the batch.
            features: :meth:`encode` of ``images`` when already computed (the feature cache); ``None`` runs the
                encoder.
            decode: bool (B,): the images the decoder sees (its targets and reconstructions are theirs only, so
                its batch statistics and its loss come from them alone); ``None``: every image. ``z`` always
                covers the whole batch.
        """
        raise NotImplementedError

    def encoder_digest(self) -> str:
        """:func:`~arcad_harness.cache.encoder_digest` of the frozen encoder (computed once; the encoder never
        changes)."""
        digest = getattr(self, "_encoder_digest", None)
        if digest is None:
            digest = encoder_digest(self.frozen_encoder())
            self._encoder_digest = digest
        return digest

    def frozen_encoder(self) -> nn.Module:
        """The module whose output :meth:`encode` returns (default: the ``encoder`` attribute)."""
        return self.encoder

    def reconstruction_loss(self, rec: Reconstruction, progress: float) -> Tensor:
        """The baseline's loss on the images the decoder saw (``forward``'s ``decode``); ``progress`` in [0, 1]
        drives warm-ups. Zero when it saw none."""
        raise NotImplementedError

    def anomaly_map(self, rec: Reconstruction, size: tuple[int, int]) -> Tensor:
        """The baseline's anomaly map before blurring: float (B, H, W) at image resolution ``size``."""
        raise NotImplementedError

    def image_score(self, maps: Tensor) -> Tensor:
        """The baseline's image score from blurred maps (B, H, W): (B,)."""
        raise NotImplementedError

    def patch_grid(self, image_size: int) -> tuple[int, int]:
        """(h, w) of ``z`` for square images of side ``image_size`` (one dry forward pass)."""
        parameter = next(self.parameters())
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                z = self(torch.zeros(1, 3, image_size, image_size, device=parameter.device)).z
        finally:
            self.train(was_training)
        if z.dim() == 4:
            return int(z.shape[2]), int(z.shape[3])
        side = int(round((z.shape[1] - self.prefix_tokens) ** 0.5))
        return side, side


def with_features(batch: Batch, model: Detector, store: FeatureStore | None, image_size: int) -> Batch:
    """``batch`` with the frozen encoder's features from ``store`` (computed for the images it lacks); unchanged
    when ``store`` is ``None`` (the detector then runs its encoder)."""
    if store is None:
        return batch
    features = store.features(
        model.encode, batch.images, batch.paths, image_size, model.encoder_digest(), batch.images.shape[0]
    )
    return batch._replace(features=features)


def decoded_rows(decode: Tensor | None, batch: int) -> Tensor | None:
    """Indices (M,) of the images whose ``decode`` flag (bool (B,)) is set; ``None`` when ``decode`` is ``None``.

    The decoder's batch size then depends on the labels, which costs one host synchronisation per step in the
    examples' training loop (not in ArcAD's loss path).
    """
    if decode is None:
        return None
    if decode.shape != (batch,):
        raise ValueError(f"decode must be bool (B,) = ({batch},), got {tuple(decode.shape)}")
    return torch.nonzero(decode.to(torch.bool)).flatten()


#: ``inference_maps`` computes the anomaly map at this many times ``z``'s grid (ArcAD averages it per patch).
MAP_UPSAMPLING: int = 4


@torch.no_grad()
def inference_maps(model: Detector, batch: Batch, z: Tensor) -> Tensor:
    """The detector's own anomaly maps of ``batch``, as at inference: (Z, 4 h, 4 w) for ``z``'s (h, w) grid.

    What ``calibrate="missed"`` reads (``arcad(z, ..., scores=inference_maps(model, batch, z))``, which averages
    them over each patch): the model in eval mode decodes every image of ``batch`` without gradient. ``z`` is the
    step's bottleneck output; when it stacks several copies of the batch (ReContrast-style: both branches, Z = 2B)
    the maps are repeated to match. Costs one forward pass of the bottleneck and decoder per step, no backward pass.
    """
    _, (h, w) = features_to_patches(z, model.prefix_tokens)
    was_training = model.training
    model.eval()
    try:
        maps = model.anomaly_map(model(batch.images, features=batch.features), (MAP_UPSAMPLING * h, MAP_UPSAMPLING * w))
    finally:
        model.train(was_training)
    return maps.repeat(z.shape[0] // maps.shape[0], 1, 1)


def missed_only(arcad: torch_arcad.ArcAD | None) -> bool:
    """Whether ``arcad`` calibrates only the defects the detector misses (it then needs :func:`inference_maps`)."""
    return arcad is not None and arcad.config.calibrate == "missed"


class Setup(NamedTuple):
    """What a detector's ``build`` returns: the model, its optimiser and ArcAD (``None`` without ArcAD)."""

    model: Detector
    optimizer: torch.optim.Optimizer
    arcad: torch_arcad.ArcAD | None


class StepOutput(NamedTuple):
    """What a detector's ``train_step`` returns.

    Attributes:
        loss: the total loss of the step (detached scalar).
        recon: the reconstruction loss (detached scalar).
        calibration: ArcAD's output (``None`` without ArcAD).
        gradients: on the steps the harness asks for them (``train_step(..., diagnose=True)``), the size of each
            term's gradient on the bottleneck (:func:`term_gradients`); ``None`` otherwise.
    """

    loss: Tensor
    recon: Tensor
    calibration: torch_arcad.ArcADOutput | None
    gradients: dict[str, float] | None = None


def finish_step(
    model: Detector,
    arcad: torch_arcad.ArcAD | None,
    optimizer: torch.optim.Optimizer,
    loss: Tensor,
    loss_recon: Tensor,
    calibration: torch_arcad.ArcADOutput | None,
    *,
    diagnose: bool = False,
) -> StepOutput:
    """The end of every detector's ``train_step``: with ``diagnose`` the gradient diagnostics on the bottleneck
    (:func:`term_gradients`, before anything is changed), then ``zero_grad``, ``backward`` and the optimiser step.

    Args:
        model: the detector (its ``bottleneck`` is measured).
        arcad: ArcAD, or ``None``.
        optimizer: the optimiser of the model and ArcAD's discriminator.
        loss: the step's total loss (scalar).
        loss_recon: the reconstruction loss (scalar).
        calibration: ArcAD's output, or ``None``.
        diagnose: measure each term's gradient first.
    """
    gradients = term_gradients(model.bottleneck, loss_recon, arcad, calibration) if diagnose else None
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return StepOutput(loss.detach(), loss_recon.detach(), calibration, gradients)


def term_gradients(
    module: nn.Module, recon: Tensor, arcad: torch_arcad.ArcAD | None, calibration: torch_arcad.ArcADOutput | None
) -> dict[str, float]:
    """How hard each loss term pulls on ``module`` (the bottleneck): for a diagnostic step, before ``backward``.

    Each term's gradient on the module's trainable parameters is taken on its own (``autograd.grad`` with the graph
    kept, so the step's ``backward`` that follows is unchanged, and no ``.grad`` is touched): ``grad_recon`` for the
    reconstruction loss and ``grad_spm``, ``grad_dgc``, ``grad_cls`` for ArcAD's terms times their lambdas (the
    global L2 norm over the parameters), and ``cos_<term>`` for the cosine between an ArcAD term's gradient and the
    reconstruction's (negative: the term works against the decoder's fit). It reads the values to the host, so
    call it on a few steps only.

    Args:
        module: the module whose parameters are measured.
        recon: the reconstruction loss (scalar, with its graph).
        arcad: the ArcAD module (its lambdas), or ``None``.
        calibration: ArcAD's output of the step (with its graph), or ``None``.

    Returns:
        ``{"grad_recon": ..., "grad_spm": ..., "cos_spm": ..., ...}`` (ArcAD's entries only with ArcAD).
    """
    params = [p for p in module.parameters() if p.requires_grad]
    terms = {"recon": recon}
    if arcad is not None and calibration is not None:
        config = arcad.config
        terms.update(
            spm=config.lambda_spm * calibration.spm,
            dgc=config.lambda_dgc * calibration.dgc,
            cls=config.lambda_cls * calibration.cls,
        )
    flat = {}
    for name, term in terms.items():
        if not term.requires_grad:
            flat[name] = torch.zeros(sum(p.numel() for p in params), device=recon.device)
            continue
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        flat[name] = torch.cat(
            [(g if g is not None else torch.zeros_like(p)).reshape(-1).float() for g, p in zip(grads, params)]
        )
    result = {f"grad_{name}": float(v.norm()) for name, v in flat.items()}
    for name in terms:
        if name != "recon":
            result[f"cos_{name}"] = float(torch.nn.functional.cosine_similarity(flat[name], flat["recon"], dim=0))
    return result


def num_prototypes(cfg: ExperimentConfig, model: Detector) -> int:
    """K: ``cfg.num_prototypes``, or :func:`~arcad_harness.config.default_num_prototypes` of the patches in one
    batch (``branches * batch_size * h * w``)."""
    if cfg.num_prototypes is not None:
        return cfg.num_prototypes
    assert cfg.image_size is not None
    h, w = model.patch_grid(cfg.image_size)
    return default_num_prototypes(model.branches * cfg.batch_size * h * w)


def arcad_kwargs(cfg: ExperimentConfig, model: Detector) -> dict[str, object]:
    """Keyword arguments of ``torch_arcad.ArcAD`` from the configuration (K, preset, lambdas, prefix tokens, seed and
    ``cfg.arcad_options``)."""
    spm, dgc, cls = cfg.lambdas
    return {
        "num_prototypes": num_prototypes(cfg, model),
        "preset": cfg.preset,
        "lambda_spm": spm,
        "lambda_dgc": dgc,
        "lambda_cls": cls,
        "prefix_tokens": model.prefix_tokens,
        "seed": cfg.seed,
        **cfg.arcad_options,
    }


@torch.no_grad()
def init_prototypes_from_features(
    model: Detector, arcad: torch_arcad.ArcAD, batches: list[Batch], seed: int
) -> int:
    """Initialise ArcAD's prototypes by k-means of the untrained model's bottleneck features of normal images.

    The model runs in training mode (the features the first steps will see: batch statistics, dropout); its
    BatchNorm running statistics are restored afterwards, so the pass leaves no trace. At most
    ``64 K`` features (a seeded random subset) enter the k-means.

    Args:
        model: the detector.
        arcad: its ArcAD module.
        batches: batches of normal training images on the model's device (with their cached encoder features,
            when the harness caches them).
        seed: seed of the subset.

    Returns:
        The number of features available (the prototypes stay uninitialised when it is below K, and the library
        then initialises them online from the first training batches).
    """
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    was_training = model.training
    model.train()
    try:
        features = []
        for batch in batches:
            z = model(batch.images, features=batch.features).z
            patches, _ = features_to_patches(z, arcad.prefix_tokens)
            features.append(patches.reshape(-1, patches.shape[-1]).float())
    finally:
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
        model.train(was_training)
    rows = torch.cat(features)
    k = arcad.prototypes.num_prototypes
    if rows.shape[0] < k:
        return int(rows.shape[0])
    limit = KMEANS_FEATURES_PER_PROTOTYPE * k
    if rows.shape[0] > limit:
        generator = torch.Generator().manual_seed(seed)
        rows = rows[torch.randperm(rows.shape[0], generator=generator)[:limit].to(rows.device)]
    arcad.prototypes.init_prototypes(torch.nn.functional.normalize(rows, dim=1))
    return int(rows.shape[0])


def load_example(baseline: str) -> DetectorSpec:
    """Deprecated alias of :func:`arcad_harness.detectors.get_detector`: the registered detector ``baseline``.

    The detectors used to be loaded from the example scripts by file path; they are now modules of
    :mod:`arcad_harness.detectors`. The returned :class:`~arcad_harness.detectors.DetectorSpec` has the ``build``
    and ``train_step`` the example module had.
    """
    warnings.warn(
        "arcad_harness.load_example is deprecated: use arcad_harness.get_detector", DeprecationWarning, stacklevel=2
    )
    from .detectors.registry import get_detector  # the detectors import this module

    return get_detector(baseline)
