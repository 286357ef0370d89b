"""How much of an anomalous training patch is defect: the defect fractions of a cold-start split's real anomalies.

Usage::

    python benchmarks/defect_fractions.py --data-root ../shared/data --categories tire magnetic_tile \\
        --seeds 0 1 2 --image-size 256 --grid 16

For each category and split seed (the split of ``benchmarks.coldstart``: :func:`torch_arcad.coldstart.make_split`
with that seed), the training masks are read as the example harness reads them (resized to ``--image-size``) and
brought to the bottleneck's ``--grid`` x ``--grid`` patches with :func:`torch_arcad.layout.mask_fractions`. Every
patch with a defect pixel is a real anomaly of eq. 7 (the paper's rule); the table gives their number and the
mean and median of their defect fractions, and how many are at least a quarter defect (``mask_threshold=0.25``).
The mean is the share of eq. 8's force that ``ArcAD(mask_weighting="fraction")`` keeps. Nothing is trained; the
data set is read in place.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from arcad_harness.data import load_images

from torch_arcad.coldstart import make_split
from torch_arcad.datasets.mvtec import split_samples
from torch_arcad.layout import mask_fractions

__all__ = ["QUARTER", "fraction_summary", "main", "markdown"]

#: The ``mask_threshold`` of the benchmark's ``mask_quarter`` arm.
QUARTER = 0.25


def fraction_summary(masks: torch.Tensor, grid: int) -> dict[str, Any]:
    """Defect fractions of the anomalous patches of ``masks``.

    Args:
        masks: (N, H, W) masks of the defective training images (any dtype :func:`mask_fractions` reads).
        grid: side of the square patch grid.

    Returns:
        ``{"patches", "mean", "median", "at_least_quarter"}`` over the patches with a defect pixel (``mean`` and
        ``median`` are NaN when there is none).
    """
    fractions = mask_fractions(masks, masks.shape[0], (grid, grid))
    anomalous = fractions[fractions > 0]
    empty = anomalous.numel() == 0
    return {
        "patches": int(anomalous.numel()),
        "mean": float("nan") if empty else float(anomalous.mean()),
        "median": float("nan") if empty else float(anomalous.median()),
        "at_least_quarter": int((anomalous >= QUARTER).sum()),
    }


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`main` as a markdown table (fractions in percent)."""
    lines = [
        (
            "| category | split seed | defective training images | anomalous patches | mean defect fraction | "
            f"median | patches >= {QUARTER:.0%} defect |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['category']} | {r['seed']} | {r['images']} | {r['patches']} | {100 * r['mean']:.1f}% | "
            f"{100 * r['median']:.1f}% | {r['at_least_quarter']} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, required=True, help="data set in the MVTec AD layout")
    p.add_argument("--categories", nargs="+", required=True)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--grid", type=int, default=16, help="side of the bottleneck's patch grid")
    args = p.parse_args(argv)
    if args.grid < 1 or args.image_size < args.grid:
        p.error("--grid must be >= 1 and at most --image-size")
    rows = []
    for category in args.categories:
        for seed in args.seeds:
            split = make_split(args.data_root, categories=[category], seed=seed)
            defective = [s for s in split_samples(split, "train", root=args.data_root) if s.label == 1]
            if not defective:
                raise ValueError(f"the split of {category} (seed {seed}) has no defective training image")
            masks = load_images(defective, args.image_size).masks
            rows.append({"category": category, "seed": seed, "images": len(defective),
                         **fraction_summary(masks, args.grid)})
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
