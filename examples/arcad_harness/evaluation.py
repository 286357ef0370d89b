"""Evaluation: every score kind in one pass over a test set, the fused score fitted on training data, metrics.

Score kinds (each an anomaly map at image resolution, blurred with sigma 4, and an image score by the baseline's
own rule: RD4AD and ReContrast the maximum, Dinomaly the mean of the top 1%):

* ``recon``: the baseline's reconstruction map (what ArcAD leaves unchanged at inference).
* ``prototype``: ``1 - max_k z . mu_k`` from :meth:`torch_arcad.ArcAD.score`, bilinearly upsampled like the
  reconstruction maps (ReContrast: the mean over its two branches).
* ``discriminator``: the discriminator's probability from the same call.
* ``fused``: ``sum_k w_k (map_k - mean_k) / std_k`` over the three maps, with ``mean_k`` and ``std_k`` the pixel
  statistics of the training normals' maps and the weights (on a 0.1 grid of the simplex) those with the highest
  pixel AUROC on the training defective images: chosen on training data only, never on the test split.
* ``fused_equal``: the same standardised maps with equal weights 1/3, the limit of shrinking the fitted weights
  toward equal. The training defects are few (7 to 26 images here) and the model was trained on them (L_dgc pushes
  their patches away from the prototypes, L_cls labels them anomalous), so the maps' pixel AUROC on them is an
  in-sample, optimistic estimate; ``Fusion.train_p_auroc_by_kind`` records it per map, for comparison with the
  test split. With ``fusion_holdout`` (see :class:`~arcad_harness.config.ExperimentConfig`) the weights are fitted
  on defective training images withheld from training instead: an out-of-sample fit, at the price of fewer
  defects for ArcAD.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from torch_arcad.datasets import MVTecSample
from torch_arcad.metrics import auroc, evaluate

from .config import ExperimentConfig
from .cache import get_store
from .data import ImageSet, iter_image_sets
from .detector import with_features
from .maps import gaussian_blur, upsample
from .training import TrainedModel

__all__ = ["ARCAD_KINDS", "Fusion", "METRICS", "evaluate_category", "fit_fusion", "fused_map", "predict_maps"]

#: Metrics reported per category and score kind.
METRICS: tuple[str, ...] = ("i_auroc", "p_auroc", "p_f1_max", "aupro")
#: The maps that the fused score combines, in the order of the weights.
ARCAD_KINDS: tuple[str, ...] = ("recon", "prototype", "discriminator")
#: Step of the weight grid on the simplex.
FUSION_GRID_STEP: float = 0.1
#: Floor of a standard deviation used for standardising a (near-)constant map.
STD_FLOOR: float = float(torch.finfo(torch.float32).eps)
#: How many test images of each category are kept for the overlay figure: defective, then normal.
FIGURE_DEFECTIVE: int = 3
FIGURE_NORMAL: int = 1


@dataclass
class Fusion:
    """The fused score of one model.

    Attributes:
        weights: kind -> weight (sums to 1).
        mean, std: kind -> pixel statistics of the training normals' maps.
        train_p_auroc: the pixel AUROC of the chosen weights on the defective images they were fitted on
            (``None`` when there is no such image with a non-empty mask, in which case the weights are recon only).
        train_p_auroc_by_kind: the pixel AUROC of each map alone on the same images, ``None`` as above.
        held_out: whether those images were withheld from training (``False``: the training defects, in-sample).
        fit_images: how many defective images the weights were fitted on.
    """

    weights: dict[str, float]
    mean: dict[str, float]
    std: dict[str, float]
    train_p_auroc: float | None
    train_p_auroc_by_kind: dict[str, float] | None = None
    held_out: bool = False
    fit_images: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy."""
        return {
            "weights": self.weights,
            "mean": self.mean,
            "std": self.std,
            "train_p_auroc": self.train_p_auroc,
            "train_p_auroc_by_kind": self.train_p_auroc_by_kind,
            "held_out": self.held_out,
            "fit_images": self.fit_images,
        }


@torch.no_grad()
def predict_maps(trained: TrainedModel, images: Tensor, features: list[Tensor] | None = None) -> dict[str, Tensor]:
    """Blurred anomaly maps of every available kind (``fused`` excluded) for a batch.

    Args:
        trained: the trained model (in eval mode).
        images: float (B, 3, H, W) on the model's device.
        features: the frozen encoder's cached output for ``images`` (``None`` runs the encoder).

    Returns:
        kind -> float32 (B, H, W) on the model's device.
    """
    model, _, arcad = trained.setup
    size = (int(images.shape[-2]), int(images.shape[-1]))
    rec = model(images, features=features)
    maps = {"recon": gaussian_blur(model.anomaly_map(rec, size))}
    if arcad is not None:
        scores = arcad.score(rec.z)
        batch = images.shape[0]
        for kind, grid_map in (("prototype", scores.prototype), ("discriminator", scores.discriminator)):
            per_branch = grid_map.reshape(model.branches, batch, *grid_map.shape[1:]).mean(dim=0)
            maps[kind] = gaussian_blur(upsample(per_branch, size))
    return maps


def fused_map(maps: dict[str, Tensor], fusion: Fusion, weights: dict[str, float] | None = None) -> Tensor:
    """``sum_k w_k (maps[k] - mean_k) / std_k``: (B, H, W), with ``fusion.weights`` or the given ``weights``."""
    weights = fusion.weights if weights is None else weights
    return sum(  # type: ignore[return-value]
        weights[kind] * (maps[kind] - fusion.mean[kind]) / fusion.std[kind] for kind in ARCAD_KINDS
    )


#: The weights of ``fused_equal``.
EQUAL_WEIGHTS: dict[str, float] = {kind: 1.0 / len(ARCAD_KINDS) for kind in ARCAD_KINDS}


def _weight_grid() -> list[tuple[float, float, float]]:
    """Weights (recon, prototype, discriminator) on the simplex, recon-only first (so ties keep the baseline's)."""
    steps = round(1.0 / FUSION_GRID_STEP)
    grid = []
    for a, b in itertools.product(range(steps, -1, -1), range(steps, -1, -1)):
        if a + b <= steps:
            grid.append((a / steps, b / steps, (steps - a - b) / steps))
    return grid


@torch.no_grad()
def _stride_maps(
    trained: TrainedModel, images: ImageSet, cfg: ExperimentConfig, index: Tensor | None = None
) -> dict[str, Tensor]:
    """The :data:`ARCAD_KINDS` maps of the images ``index`` (int64 (M,); default every image) of ``images``,
    subsampled by ``cfg.eval_stride``: kind -> float32 (M, H / stride, W / stride) on the CPU."""
    stride = cfg.eval_stride or 1
    collected: dict[str, list[Tensor]] = {kind: [] for kind in ARCAD_KINDS}
    store = get_store(cfg.feature_cache)
    index = torch.arange(len(images)) if index is None else index
    for chunk in index.split(cfg.batch_size):
        batch = with_features(images.batch(chunk, cfg.device), trained.setup.model, store, cfg.image_size)
        maps = predict_maps(trained, batch.images, batch.features)
        for kind in ARCAD_KINDS:
            collected[kind].append(maps[kind][:, ::stride, ::stride].cpu())
    return {kind: torch.cat(values) for kind, values in collected.items()}


@torch.no_grad()
def fit_fusion(
    trained: TrainedModel, train_set: ImageSet, cfg: ExperimentConfig, held_out: ImageSet | None = None
) -> Fusion:
    """Fit the fused score of a model: the standardisation on the training normals, the weights on defects.

    Args:
        trained: a model trained with ArcAD.
        train_set: its training images (normal and defective).
        cfg: configuration (``batch_size``, ``eval_stride``, ``device``).
        held_out: defective images withheld from training (see :func:`arcad_harness.data.hold_out_defects`);
            when given the weights are fitted on them alone, otherwise on the defective images of ``train_set``.

    Returns:
        The :class:`Fusion`; deterministic for given maps.
    """
    stride = cfg.eval_stride or 1
    normal = train_set.labels == 0
    if held_out is None:  # the training images' maps serve both the standardisation and the fit
        fit_set, fit_maps = train_set, _stride_maps(trained, train_set, cfg)
        normal_maps = {kind: maps[normal] for kind, maps in fit_maps.items()}
    else:  # the defective training images play no part: only the normals' maps are computed
        fit_set, fit_maps = held_out, _stride_maps(trained, held_out, cfg)
        normal_maps = _stride_maps(trained, train_set, cfg, normal.nonzero().squeeze(1))
    mean = {kind: float(normal_maps[kind].mean()) for kind in ARCAD_KINDS}
    std = {kind: max(float(normal_maps[kind].std()), STD_FLOOR) for kind in ARCAD_KINDS}
    masks = fit_set.masks[:, ::stride, ::stride]
    defective = (fit_set.labels == 1) & masks.flatten(1).any(dim=1)
    recon_only = {"recon": 1.0, "prototype": 0.0, "discriminator": 0.0}
    flags = {"held_out": held_out is not None, "fit_images": int(defective.sum())}
    if not bool(defective.any()) or bool(masks[defective].all()):
        return Fusion(recon_only, mean, std, None, **flags)
    standardised = [((fit_maps[kind][defective] - mean[kind]) / std[kind]).flatten() for kind in ARCAD_KINDS]
    labels = masks[defective].flatten()
    by_kind = {kind: auroc(values, labels) for kind, values in zip(ARCAD_KINDS, standardised)}
    best, best_weights = -1.0, recon_only
    for weights in _weight_grid():
        score = auroc(sum(w * s for w, s in zip(weights, standardised)), labels)
        if score > best:
            best, best_weights = score, dict(zip(ARCAD_KINDS, weights))
    return Fusion(best_weights, mean, std, best, by_kind, **flags)


@dataclass
class CategoryResult:
    """Metrics of one category and the few test images kept for figures.

    Attributes:
        metrics: kind -> {metric: value in [0, 1]}.
        examples: list of {"image": uint8 (3, H, W), "mask": bool (H, W), "label", "path", "maps": kind -> (H, W)}.
        recon_error: the reconstruction map's mean on the normal test images (``"normal"``: the decoder's error on
            normal test patches) and on the defect pixels of the defective ones (``"defect"``).
    """

    metrics: dict[str, dict[str, float]]
    examples: list[dict[str, Any]]
    recon_error: dict[str, float] = field(default_factory=dict)


def _figure_indices(samples: Sequence[MVTecSample]) -> set[int]:
    defective = [i for i, s in enumerate(samples) if s.label == 1]
    normal = [i for i, s in enumerate(samples) if s.label == 0]
    chosen = set()
    if defective:
        step = len(defective) / min(FIGURE_DEFECTIVE, len(defective))
        chosen |= {defective[int(j * step)] for j in range(min(FIGURE_DEFECTIVE, len(defective)))}
    chosen |= set(normal[:FIGURE_NORMAL])
    return chosen


@torch.no_grad()
def evaluate_category(
    trained: TrainedModel,
    fusion: Fusion | None,
    category: str,
    samples: Sequence[MVTecSample],
    cfg: ExperimentConfig,
    keep_examples: bool,
) -> CategoryResult:
    """Every score kind of one category's test set in one pass, then I-AUROC, P-AUROC, P-F1-max and AUPRO.

    Image scores use the full-resolution maps; the pixel metrics use every ``cfg.eval_stride``-th row and column of
    maps and masks (AUPRO regions are those of the sampled masks).

    Raises:
        ValueError: a metric is undefined (e.g. the test set lacks normal or defect pixels); the message names the
            category.
    """
    assert cfg.image_size is not None
    model = trained.setup.model
    stride = cfg.eval_stride or 1
    kinds = ["recon"] + (["prototype", "discriminator", "fused", "fused_equal"] if fusion is not None else [])
    image_scores: dict[str, list[Tensor]] = {kind: [] for kind in kinds}
    pixel_maps: dict[str, list[Tensor]] = {kind: [] for kind in kinds}
    labels, masks, examples = [], [], []
    wanted = _figure_indices(samples) if keep_examples else set()
    offset = 0
    store = get_store(cfg.feature_cache)
    for chunk in iter_image_sets(samples, cfg.image_size, cfg.batch_size):
        batch = with_features(chunk.batch(torch.arange(len(chunk)), cfg.device), model, store, cfg.image_size)
        maps = predict_maps(trained, batch.images, batch.features)
        if fusion is not None:
            maps["fused"] = fused_map(maps, fusion)
            maps["fused_equal"] = fused_map(maps, fusion, EQUAL_WEIGHTS)
        for kind in kinds:
            image_scores[kind].append(model.image_score(maps[kind]).cpu())
            pixel_maps[kind].append(maps[kind][:, ::stride, ::stride].cpu())
        labels.append(chunk.labels)
        masks.append(chunk.masks[:, ::stride, ::stride])
        for local in range(len(chunk)):
            if offset + local in wanted:
                examples.append(
                    {
                        "image": chunk.images[local],
                        "mask": chunk.masks[local],
                        "label": int(chunk.labels[local]),
                        "path": chunk.paths[local],
                        "maps": {kind: maps[kind][local].cpu() for kind in kinds},
                    }
                )
        offset += len(chunk)
    all_labels, all_masks = torch.cat(labels), torch.cat(masks)
    metrics = {}
    for kind in kinds:
        try:
            values = evaluate(
                torch.cat(image_scores[kind]), all_labels, torch.cat(pixel_maps[kind]), all_masks, pixel_stride=1
            )
        except ValueError as error:
            raise ValueError(f"category {category!r}, score {kind!r}: {error}") from error
        metrics[kind] = {metric: float(values[metric]) for metric in METRICS}
    recon = torch.cat(pixel_maps["recon"])
    recon_error = {
        "normal": float(recon[all_labels == 0].mean()),
        "defect": float(recon[all_masks.bool()].mean()) if all_masks.any() else math.nan,
    }
    return CategoryResult(metrics=metrics, examples=examples, recon_error=recon_error)
