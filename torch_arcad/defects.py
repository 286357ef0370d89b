"""``torch-arcad-defects``: how much of a defective patch is defect, for the images of an MVTec-layout folder.

Usage::

    torch-arcad-defects --data-root DIR --category NAME [--grid 16] [--image-size 256] [--split-seed S]

Reads the category's defect masks (all of them, or with ``--split-seed`` the defective training images of the
cold-start split that :func:`torch_arcad.coldstart.make_split` makes with that seed), resizes them to the
detector's input size as :class:`~torch_arcad.datasets.MVTecDataset` does, and prints
:func:`~torch_arcad.layout.summarize_defect_fractions` on the bottleneck's grid with the configuration README's
decision table gives for that case. Nothing is trained; the folder is only read.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from .coldstart import make_split
from .datasets.images import MVTecDataset
from .datasets.mvtec import scan_category, split_samples
from .layout import THIN_DEFECT_FRACTION, summarize_defect_fractions

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="torch-arcad-defects", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True, help="data set root in the MVTec AD layout")
    p.add_argument("--category", required=True)
    p.add_argument("--grid", type=int, default=16, help="side of the bottleneck's patch grid (default: 16)")
    p.add_argument("--image-size", type=int, default=256, help="the detector's input size (default: 256)")
    p.add_argument("--split-seed", type=int, default=None,
                   help="only the defective training images of the cold-start split of this seed")
    args = p.parse_args(argv)
    if args.grid < 1 or args.image_size < args.grid:
        p.error("--grid must be >= 1 and at most --image-size")
    if args.split_seed is None:
        samples = scan_category(args.data_root, args.category).test_defects
        source = "all defect masks"
    else:
        split = make_split(args.data_root, categories=[args.category], seed=args.split_seed)
        samples = [s for s in split_samples(split, "train", root=args.data_root) if s.label == 1]
        source = f"the defective training images of the cold-start split (seed {args.split_seed})"
    samples = [s for s in samples if s.mask is not None]
    if not samples:
        p.error(f"no defect mask found for {args.category!r} under {args.data_root}")
    dataset = MVTecDataset(samples, args.image_size)
    masks = torch.stack([dataset[i]["mask"][0] for i in range(len(dataset))])
    summary = summarize_defect_fractions(masks, args.grid)
    print(f"{args.category}: {source}, {args.image_size} px, {args.grid} x {args.grid} patches")
    print(f"  images with a defect: {summary.images} of {len(samples)}")
    print(f"  anomalous patches:    {summary.patches}")
    print(f"  defect fraction:      mean {summary.mean:.1%}, median {summary.median:.1%}")
    print(f"  patches >= {THIN_DEFECT_FRACTION:.0%} defect: {summary.at_least_quarter}")
    if summary.thin:
        print("  thin defects (mean below a quarter of a patch): ArcAD's push moves mostly normal texture here; "
              "see README's 'Does it help?' for the configuration measured on such defects.")
    else:
        print("  defects that fill their patches: the case where ArcAD's gain was measured; "
              "see README's 'Does it help?'.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
