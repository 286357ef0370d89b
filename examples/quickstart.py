"""Quickstart: RD4AD with and without ArcAD on the generated synthetic data, side by side.

No download and no data set needed: the synthetic MVTec-layout data set (three categories: grid, fabric, washer) is
generated once into the cache (``$TORCH_ARCAD_CACHE`` or ``~/.cache/torch_arcad``), the cold-start split is made
(30% of the normal training images, plus defects moved in to make 10% of the training set), and the same
RD4AD-style detector (frozen EfficientNet-Lite0 from its packaged checkpoint) is trained twice, each time as one
model for all three categories (the paper's multi-class setting): on the training normals alone (the baseline)
and on the whole cold-start training set with ArcAD. Both are evaluated per category on the same test images; the
table shows the baseline's reconstruction score against +ArcAD's.

Usage::

    python examples/quickstart.py                  # a few minutes on a 2-core CPU (see examples/README.md)
    python examples/quickstart.py --tiny           # seconds: a smoke test of the whole pipeline
    python examples/quickstart.py --score fused    # compare with ArcAD's fused score instead

Outputs land in ``runs/quickstart`` (``results.md``, ``results.json``, and per arm the figures).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arcad_harness import SCORE_KINDS, ExperimentConfig, run_comparison, tiny_config  # noqa: E402

#: Sized for a laptop CPU: one model per arm for the three categories, 128 px synthetic images (8 x 8 bottleneck
#: grid), 150 steps of batch 16.
SETTING: str = "multi"
IMAGE_SIZE: int = 128
STEPS: int = 150
BATCH_SIZE: int = 16
LOG_EVERY: int = 50


def quickstart_config(output: str, score: str = "recon", figures: bool = True, tiny: bool = False) -> ExperimentConfig:
    """The configuration of the quickstart (``tiny``: the seconds-long smoke version)."""
    cfg = ExperimentConfig(baseline="rd4ad", setting=SETTING, output_dir=output, score=score, figures=figures)
    if tiny:
        return tiny_config(cfg)
    return ExperimentConfig(
        baseline="rd4ad",
        setting=SETTING,
        image_size=IMAGE_SIZE,
        steps=STEPS,
        batch_size=BATCH_SIZE,
        log_every=LOG_EVERY,
        output_dir=output,
        score=score,
        figures=figures,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; returns the exit status."""
    parser = argparse.ArgumentParser(description="RD4AD with and without ArcAD on synthetic data, side by side.")
    parser.add_argument("--output", default="runs/quickstart", help="output folder (default: %(default)s)")
    parser.add_argument("--score", choices=SCORE_KINDS, default="recon", help="+ArcAD score shown (default: recon)")
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke run (tiny images, 3 steps)")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    args = parser.parse_args(argv)
    run_comparison(quickstart_config(args.output, args.score, not args.no_figures, args.tiny))
    return 0


if __name__ == "__main__":
    sys.exit(main())
