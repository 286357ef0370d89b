"""Thin defects under a resize: how many of a cold-start split's defective training images keep an anomalous
patch when their masks are shrunk, with the masks read relative to their own peak (the library) or at an absolute
0.5 (earlier versions).

Usage::

    python -m benchmarks.thin_masks --data-root ../shared/data --categories tire kolektorsdd --seeds 0 1 2 \\
        --sizes 256 128 64 32 --grid 16

For each split seed, the defective training images' masks (256 px in the shared data) are resized bilinearly with
antialiasing to each size (a detector run at a smaller input) and brought to the same ``--grid`` x ``--grid``
bottleneck grid. The reference is the 256 px mask pooled to that grid. Reported per size: images that keep at least one anomalous patch, anomalous patches, their
mean defect fraction, and the fraction's mean absolute error against the reference, for both readings. Nothing is
trained; the data are read in place.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from torch_arcad.coldstart import make_split
from torch_arcad.datasets.images import MVTecDataset
from torch_arcad.datasets.mvtec import split_samples
from torch_arcad.layout import mask_fractions

__all__ = ["main", "compare"]

#: The absolute level of earlier versions (and of the paper preset's ``mask_level``).
LEVEL: float = 0.5


def _absolute_fractions(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(N, h * w) fractions of pixels above an absolute 0.5, as earlier versions read soft masks."""
    return F.adaptive_avg_pool2d((masks > LEVEL).float().unsqueeze(1), grid).flatten(1)


def compare(masks: torch.Tensor, size: int, side: int) -> dict[str, dict[str, float]]:
    """Both readings of ``masks`` (N, 256, 256) shrunk to ``size`` against the full-size reference.

    Returns:
        ``{"relative": {...}, "absolute": {...}}`` with ``images_kept``, ``patches``, ``mean_fraction`` and
        ``fraction_error`` (mean absolute error of the fractions over the reference's anomalous patches).
    """
    grid = (side, side)
    reference = F.adaptive_avg_pool2d(masks.unsqueeze(1), grid).flatten(1)
    small = F.interpolate(masks.unsqueeze(1), size=(size, size), mode="bilinear", antialias=True)[:, 0]
    rows = {}
    for name, fractions in (("relative", mask_fractions(small, len(small), grid, level=LEVEL)),
                            ("absolute", _absolute_fractions(small, grid))):
        anomalous = fractions > 0
        rows[name] = {
            "images_kept": int(anomalous.any(dim=1).sum()),
            "patches": int(anomalous.sum()),
            "mean_fraction": float(fractions[anomalous].mean()) if anomalous.any() else float("nan"),
            "fraction_error": float((fractions - reference)[reference > 0].abs().mean()),
        }
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--categories", nargs="+", required=True)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--sizes", nargs="+", type=int, default=[256, 128, 64])
    p.add_argument("--grid", type=int, default=16, help="side of the bottleneck grid at every size (default: 16)")
    args = p.parse_args(argv)
    print("| category | seed | size | images | images kept (relative / absolute) | anomalous patches | "
          "mean defect fraction | fraction error vs 256 px |")
    print("|---|---|---|---|---|---|---|---|")
    for category in args.categories:
        for seed in args.seeds:
            split = make_split(args.data_root, categories=[category], seed=seed)
            samples = [s for s in split_samples(split, "train", root=args.data_root) if s.label == 1]
            dataset = MVTecDataset(samples, 256)
            masks = torch.stack([dataset[i]["mask"][0] for i in range(len(dataset))])
            for size in args.sizes:
                r = compare(masks, size, args.grid)
                rel, ab = r["relative"], r["absolute"]
                print(f"| {category} | {seed} | {size} | {len(samples)} | {rel['images_kept']} / {ab['images_kept']} "
                      f"| {rel['patches']} / {ab['patches']} | {100 * rel['mean_fraction']:.1f}% / "
                      f"{100 * ab['mean_fraction']:.1f}% | {100 * rel['fraction_error']:.1f} / "
                      f"{100 * ab['fraction_error']:.1f} points |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
