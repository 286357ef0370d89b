"""Discriminator probe: what eq. 9's discriminator learns on a fixed feature space, and whether it ranks unseen real
defects above normal patches.

Usage::

    python benchmarks/discriminator_probe.py --data-root DIR --output OUT [--categories a b] [--seeds 0 1 2] \\
        [--steps 300] [--image-size 256] [--configs paper sigma_dim ...] [--threads 1]
    python benchmarks/discriminator_probe.py --quick --output OUT        # seconds, synthetic data

The full benchmark trains the detector and ArcAD together, so a discriminator that fails there may fail because of
its objective or because the bottleneck moves under it. The probe removes the second cause: the features are the
frozen EfficientNet-Lite0 tokens on the stride-16 grid (the 176-dim tokens the Dinomaly-style example's bottleneck
reads; every image's are computed once), the prototypes are the spherical k-means of the training normals' patches,
and only ArcAD's L_cls trains (``lambda_spm = lambda_dgc = 0``, ``lambda_cls = 1``, AdamW 2e-3, batches of 16
training images of the cold-start split). For each configuration it reports, on the split's test images, the patch
AUROC of the discriminator's probability (patches touching a defect pixel are positive), its mean probability on
normal and on defect patches, its accuracy on the last training steps (normal / synthetic / real), the same patch
AUROC on the training defects it was trained on (in-sample), and the prototype-distance map's patch AUROC on the same
features for reference.

Configurations (:data:`CONFIGS`): ``paper`` (sigma 0.015, one focal mean, alpha 0.75), ``sigma_dim`` (eq. 5's noise
scaled to the paper's 768-dim bottleneck, ``sigma * sqrt(768 / D)``, which keeps the pseudo-anomalies at the angle
from their anchors they have at D = 768), and ``*_synthetic_only``: trained without the training defects (every
training image treated as normal), what the pseudo-anomalies alone teach. (The class-balanced focal variants of
earlier versions used a discriminator weighting the library no longer has; their results stay in
docs/investigations.)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch_arcad

import torch
import torch.nn.functional as F

from torch_arcad.coldstart import make_split, split_samples
from torch_arcad.functional import spherical_kmeans
from torch_arcad.layout import masks_to_patches
from torch_arcad.metrics import auroc

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The bottleneck width whose pseudo-anomaly angle ``sigma_dim`` keeps (the paper's ViT-B).
REFERENCE_DIM: int = 768
#: name -> (ArcAD keyword options, train with the real defects); ``"sigma_reference_dim"`` is this script's own
#: option: eq. 5's sigma scaled by ``sqrt(D_ref / D)``.
CONFIGS: dict[str, tuple[dict[str, Any], bool]] = {
    "paper": ({}, True),
    "sigma_dim": ({"sigma_reference_dim": REFERENCE_DIM}, True),
    "paper_synthetic_only": ({}, False),
    "sigma_dim_synthetic_only": ({"sigma_reference_dim": REFERENCE_DIM}, False),
}
DEFAULT_CONFIGS: tuple[str, ...] = tuple(CONFIGS)
#: AdamW settings of the paper.
LR: float = 2e-3
WEIGHT_DECAY: float = 1e-4
BATCH_SIZE: int = 16
#: Patches per prototype of the harness's automatic K (16 images of 16 x 16 patches -> K = 128).
PATCHES_PER_PROTOTYPE: int = 25
#: The training accuracy reported is the mean over this last fraction of the steps.
LAST_WINDOW: float = 0.1
PERCENT: float = 100.0
QUICK = {"steps": 5, "image_size": 64, "num_prototypes": 8}


def _harness() -> Any:
    import arcad_harness

    return arcad_harness


def _tokens(images: Any, image_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frozen EfficientNet-Lite0 tokens (N, h * w, 176) of an ImageSet, its patch labels (N, h * w) and image
    labels (N,)."""
    from arcad_harness.cache import FeatureStore, encoder_digest
    from arcad_harness.encoders import CNNTokens, build_cnn

    encoder = CNNTokens(build_cnn("efficientnet_lite0", "packaged")).eval()
    store = FeatureStore()
    pixels = images.images.float() / 255.0
    layers = store.features(encoder, pixels, images.paths, image_size, encoder_digest(encoder), BATCH_SIZE)
    tokens = torch.stack(layers).mean(dim=0)[:, encoder.prefix_tokens :]  # the layers fused as Dinomaly does
    side = int(round(tokens.shape[1] ** 0.5))
    patches = masks_to_patches(images.masks.float(), tokens.shape[0], (side, side), 0.0)
    return tokens, patches & (images.labels == 1).unsqueeze(1), images.labels


def _patch_auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    if not bool(positive.any()) or bool(positive.all()):
        return math.nan
    return auroc(scores.flatten(), positive.flatten())


def probe(
    train: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    options: Mapping[str, Any],
    with_defects: bool,
    steps: int,
    num_prototypes: int,
    seed: int,
) -> dict[str, float]:
    """Train ArcAD's discriminator alone on frozen tokens and score it.

    Args:
        train, test: ``(tokens (N, P, D), patch labels bool (N, P), image labels (N,))``.
        options: ArcAD keyword options.
        with_defects: train with the training defects (else every training image counts as normal).
        steps: optimiser steps.
        num_prototypes: K.
        seed: seed of the prototypes, the batches and the noise.

    Returns:
        ``{"test_auroc", "test_p_normal", "test_p_defect", "train_defect_auroc", "acc_normal", "acc_synthetic",
        "acc_real", "prototype_auroc"}`` (fractions; ``nan`` where undefined).
    """
    tokens, patches, labels = train
    if not with_defects:
        labels = torch.zeros_like(labels)
        patches = torch.zeros_like(patches)
    dim = tokens.shape[-1]
    torch.manual_seed(seed)
    options = dict(options)
    reference_dim = options.pop("sigma_reference_dim", None)
    if reference_dim is not None:  # the pseudo-anomalies at the angle they have at D_ref
        options["sigma"] = torch_arcad.get_preset("paper").sigma * math.sqrt(reference_dim / dim)
    arcad = torch_arcad.ArcAD(dim, num_prototypes, lambda_spm=0.0, lambda_dgc=0.0, lambda_cls=1.0, seed=seed, **options)
    normal_rows = F.normalize(tokens[labels == 0].reshape(-1, dim), dim=1)
    generator = torch.Generator().manual_seed(seed)
    arcad.prototypes.init_prototypes(spherical_kmeans(normal_rows, num_prototypes, generator=generator))
    optimizer = torch.optim.AdamW(arcad.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    side = int(round(tokens.shape[1] ** 0.5))
    accuracy: list[list[float]] = []
    for step in range(steps):
        index = torch.randint(tokens.shape[0], (BATCH_SIZE,), generator=generator)
        masks = patches[index].float().reshape(-1, side, side)
        out = arcad(tokens[index], masks=masks, labels=labels[index])
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        if step >= steps * (1 - LAST_WINDOW):
            values = out.stats["discriminator_accuracy"].tolist()
            if not bool(patches[index].any()):
                values[2] = math.nan
            accuracy.append(values)
    arcad.eval()
    test_tokens, test_patches, _ = test
    scores = arcad.score(test_tokens)
    disc = scores.discriminator.flatten(1)
    train_scores = arcad.score(train[0]).discriminator.flatten(1)
    defective = train[2] == 1

    def mean(values: list[float]) -> float:
        finite = [v for v in values if math.isfinite(v)]
        return statistics.fmean(finite) if finite else math.nan

    return {
        "test_auroc": _patch_auroc(disc, test_patches),
        "test_p_normal": float(disc[~test_patches].mean()),
        "test_p_defect": float(disc[test_patches].mean()) if bool(test_patches.any()) else math.nan,
        "train_defect_auroc": _patch_auroc(train_scores[defective], train[1][defective]),
        "acc_normal": mean([a[0] for a in accuracy]),
        "acc_synthetic": mean([a[1] for a in accuracy]),
        "acc_real": mean([a[2] for a in accuracy]),
        "prototype_auroc": _patch_auroc(scores.prototype.flatten(1), test_patches),
    }


def _fmt(values: Sequence[float], scale: float = PERCENT) -> str:
    finite = [scale * v for v in values if math.isfinite(v)]
    if not finite:
        return "n/a"
    if len(finite) == 1:
        return f"{finite[0]:.1f}"
    return f"{statistics.fmean(finite):.1f} ± {statistics.stdev(finite):.1f}"


COLUMNS: tuple[tuple[str, str], ...] = (
    ("test_auroc", "disc. patch AUROC (test)"),
    ("test_p_normal", "p(normal patch)"),
    ("test_p_defect", "p(defect patch)"),
    ("train_defect_auroc", "disc. patch AUROC (train defects, in-sample)"),
    ("acc_normal", "acc. normal"),
    ("acc_synthetic", "acc. synthetic"),
    ("acc_real", "acc. real"),
    ("prototype_auroc", "prototype patch AUROC (test)"),
)


def markdown(results: Mapping[str, Mapping[str, Sequence[Mapping[str, float]]]]) -> str:
    """One table per category: a row per configuration, mean ± std over seeds (percent)."""
    lines = []
    for category, configs in results.items():
        lines += [f"### {category}", "", "| config | " + " | ".join(label for _, label in COLUMNS) + " | seeds |",
                  "|" + "---|" * (len(COLUMNS) + 2)]
        for name, runs in configs.items():
            cells = [_fmt([r[key] for r in runs]) for key, _ in COLUMNS]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {len(runs)} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--categories", nargs="+", default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--num-prototypes", type=int, default=None, help="K (default: patches per batch / 25)")
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), choices=tuple(CONFIGS))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny synthetic run for the tests")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    harness = _harness()
    from arcad_harness.data import load_images

    steps, image_size, k = args.steps, args.image_size, args.num_prototypes
    if args.quick:
        steps, image_size, k = QUICK["steps"], QUICK["image_size"], QUICK["num_prototypes"]
    root = args.data_root
    if root is None:
        if not args.quick:
            raise SystemExit("--data-root is required (or use --quick for a synthetic data set)")
        from torch_arcad.datasets import make_synthetic_dataset

        root = make_synthetic_dataset(args.output / "synthetic", categories=["grid"], image_size=64, num_train=20,
                                      num_test_good=4, num_defects_per_kind=2)
    from torch_arcad.datasets import list_categories

    categories = args.categories or list_categories(root)
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    start = time.perf_counter()
    for category in categories:
        results[category] = {name: [] for name in args.configs}
        for seed in args.seeds:
            split = make_split(root, categories=[category], seed=seed)
            train_set = load_images(split_samples(split, "train", categories=[category], root=root), image_size)
            test_set = load_images(split_samples(split, "test", categories=[category], root=root), image_size)
            train, test = _tokens(train_set, image_size), _tokens(test_set, image_size)
            num_prototypes = k or harness.default_num_prototypes(BATCH_SIZE * train[0].shape[1])
            for name in args.configs:
                options, with_defects = CONFIGS[name]
                result = probe(train, test, options=options, with_defects=with_defects, steps=steps,
                               num_prototypes=num_prototypes, seed=seed)
                results[category][name].append(result)
                print(f"{category} seed {seed} {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()),
                      flush=True)
    args.output.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/discriminator_probe.py " + " ".join(sys.argv[1:] if argv is None else argv)
    summary = {"command": command, "steps": steps, "image_size": image_size, "seeds": args.seeds,
               "torch_threads": torch.get_num_threads(), "wall_time_s": time.perf_counter() - start,
               "results": results}
    (args.output / "probe.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    text = f"# Discriminator probe\n\nCommand: `{command}`\n\n" + markdown(results)
    (args.output / "probe.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
