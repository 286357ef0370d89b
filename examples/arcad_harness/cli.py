"""The command line shared by the example scripts (``python examples/<baseline>.py --help``)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from torch_arcad import PRESETS
from torch_arcad.config import CALIBRATE

from .config import (
    DEFAULT_PRESET,
    DEFAULT_RESUME_EVERY,
    ENCODERS,
    PROTOTYPE_INITS,
    SCORE_KINDS,
    SETTINGS,
    ExperimentConfig,
)

__all__ = ["TINY", "build_parser", "config_from_args", "main", "tiny_config"]

#: ``--tiny``: a seconds-long end-to-end run (tests, smoke checks): one tiny synthetic category, 32 px, 3 steps.
TINY: dict[str, object] = {
    "image_size": 32,
    "steps": 3,
    "batch_size": 4,
    "num_prototypes": 8,
    "width": 32,
    "log_every": 1,
    "synthetic": {"image_size": 32, "num_train": 10, "num_test_good": 3, "num_defects_per_kind": 2,
                  "categories": ["grid"]},
}
#: Default output folder of the scripts (relative to the working directory).
DEFAULT_OUTPUT: str = "runs"
#: Exit status for bad input.
EXIT_BAD_INPUT: int = 2


def tiny_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with the :data:`TINY` sizes (fields set explicitly in ``cfg`` to non-defaults are kept)."""
    defaults = ExperimentConfig()
    changes = {k: v for k, v in TINY.items() if getattr(cfg, k) == getattr(defaults, k)}
    if cfg.data_root is not None or cfg.split_path is not None:
        changes.pop("synthetic", None)
    return dataclasses.replace(cfg, **changes)  # type: ignore[arg-type]


def build_parser(baseline: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; ``baseline`` fixes the baseline (the example scripts), ``None`` adds ``--baseline``."""
    prog = f"{baseline}.py" if baseline else "arcad_harness"
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Train a reconstruction-based anomaly detector with ArcAD on a cold-start split (or without it, "
            "--no-arcad; or both, --compare) and report I-AUROC, P-AUROC, P-F1-max and AUPRO per category for "
            "the reconstruction, prototype, discriminator and fused scores."
        ),
    )
    if baseline is None:
        from .detectors.registry import DETECTORS  # the detectors import the harness's modules

        parser.add_argument("--baseline", choices=tuple(DETECTORS), default="rd4ad")
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data-root", default=None, help="data set in the MVTec AD layout (default: generated synthetic data)"
    )
    data.add_argument("--split", default=None, help="cold-start manifest from python -m torch_arcad.coldstart "
                      "(default: the split is made here, seed --split-seed)")
    data.add_argument("--categories", nargs="+", default=None, help="categories (default: all)")
    data.add_argument("--split-seed", type=int, default=None, help="seed of the split made here (default: --seed)")
    data.add_argument("--setting", choices=SETTINGS, default="single",
                      help="single: one model per category; multi: one model for all (default: %(default)s)")
    arms = parser.add_argument_group("arms")
    group = arms.add_mutually_exclusive_group()
    group.add_argument("--no-arcad", action="store_true", help="the plain baseline, trained on the normal images only")
    group.add_argument("--compare", action="store_true", help="run the baseline and +ArcAD and show them side by side")
    model = parser.add_argument_group("model and training")
    model.add_argument("--encoder", choices=ENCODERS, default="efficientnet_lite0", help="default: %(default)s")
    model.add_argument("--weights", default=None, help="encoder checkpoint: PATH, packaged (EfficientNet-Lite0 "
                       "default), imagenet / lvd142m (download), random (tests only)")
    model.add_argument("--width", type=int, default=None, help="bottleneck width (default: per example)")
    model.add_argument("--steps", type=int, default=None, help="default: 600 (150 on synthetic data)")
    model.add_argument("--batch-size", type=int, default=16)
    model.add_argument("--image-size", type=int, default=None, help="default: 256 (392 DINOv2, 128 synthetic)")
    model.add_argument("--lr", type=float, default=2e-3)
    model.add_argument("--weight-decay", type=float, default=1e-4)
    model.add_argument("--seed", type=int, default=0, help="training seed")
    model.add_argument("--device", default="cpu")
    model.add_argument("--feature-cache", default="memory", metavar="memory|off|disk:DIR",
                       help="keep each image's frozen-encoder features, computed once (default: %(default)s)")
    model.add_argument("--resume-dir", default=None, metavar="DIR",
                       help="write the training state there every --resume-every steps and continue from it when "
                       "the run is started again (default: no snapshots)")
    model.add_argument("--resume-every", type=int, default=DEFAULT_RESUME_EVERY, metavar="N",
                       help="steps between snapshots with --resume-dir (default: %(default)s)")
    arcad = parser.add_argument_group("ArcAD")
    arcad.add_argument("--num-prototypes", type=int, default=None, help="K (default: patches per batch / 25, 64..500)")
    arcad.add_argument("--lambdas", nargs=3, type=float, default=(0.1, 0.1, 0.1), metavar=("SPM", "DGC", "CLS"))
    arcad.add_argument("--preset", choices=tuple(PRESETS), default=DEFAULT_PRESET,
                       help="ArcAD preset (default: %(default)s; official: the authors' released code)")
    arcad.add_argument("--calibrate", choices=CALIBRATE, default=None,
                       help="which real anomalies eq. 8-9 take: all (the presets) or missed, only those the "
                       "detector's own map does not already rank above every normal patch (docs/results.md)")
    arcad.add_argument("--prototype-init", choices=PROTOTYPE_INITS, default="offline")
    out = parser.add_argument_group("output")
    out.add_argument("--output", default=None, help=f"output folder (default: {DEFAULT_OUTPUT}/<baseline>)")
    out.add_argument("--score", choices=SCORE_KINDS, default="recon", help="headline score (default: %(default)s)")
    out.add_argument("--fusion-holdout", type=int, default=0, metavar="N",
                     help="withhold N defective training images per category from training and fit the fused "
                     "score's weights on them (default: 0, fit on the training defects)")
    out.add_argument(
        "--eval-stride", type=int, default=None, help="pixel subsampling of the metrics (default: size // 128)"
    )
    out.add_argument("--log-every", type=int, default=25)
    out.add_argument("--no-figures", action="store_true")
    out.add_argument("--quiet", action="store_true")
    out.add_argument("--tiny", action="store_true", help="seconds-long smoke run (tiny synthetic data, 32 px, 3 steps)")
    return parser


def config_from_args(args: argparse.Namespace, baseline: str | None = None) -> ExperimentConfig:
    """The :class:`ExperimentConfig` of parsed arguments."""
    name = baseline or args.baseline
    cfg = ExperimentConfig(
        baseline=name,
        data_root=args.data_root,
        split_path=args.split,
        categories=args.categories,
        setting=args.setting,
        arcad=not args.no_arcad,
        steps=args.steps,
        batch_size=args.batch_size,
        image_size=args.image_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        split_seed=args.seed if args.split_seed is None else args.split_seed,
        num_prototypes=args.num_prototypes,
        lambdas=tuple(args.lambdas),
        preset=args.preset,
        arcad_options={} if args.calibrate is None else {"calibrate": args.calibrate},
        prototype_init=args.prototype_init,
        encoder=args.encoder,
        weights=args.weights,
        width=args.width,
        device=args.device,
        feature_cache=args.feature_cache,
        output_dir=args.output if args.output is not None else f"{DEFAULT_OUTPUT}/{name}",
        figures=not args.no_figures,
        log_every=args.log_every,
        eval_stride=args.eval_stride,
        score=args.score,
        fusion_holdout=args.fusion_holdout,
        resume_dir=args.resume_dir,
        resume_every=args.resume_every,
        verbose=not args.quiet,
    )
    return tiny_config(cfg) if args.tiny else cfg


def main(argv: Sequence[str] | None = None, *, baseline: str | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 2 bad input with a one-line message)."""
    from .experiment import run_comparison, run_experiment

    parser = build_parser(baseline)
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args, baseline)
        if args.compare:
            run_comparison(cfg)
        else:
            run_experiment(cfg)
    except (ValueError, TypeError, OSError, ImportError) as error:
        # Bad input: a missing or malformed data root or split, a category without masks, a checkpoint that does
        # not fit (arcad_harness.backbones.CheckpointError is a ValueError), a missing optional package.
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0
