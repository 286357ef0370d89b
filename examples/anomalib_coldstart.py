"""RD4AD and Dinomaly from anomalib, with and without ArcAD, on a cold-start split, through anomalib's Engine.

Needs the anomalib extra (``pip install -e ".[anomalib]"``, see README.md's set-up). For each model it trains, in
anomalib's ``Engine``:

- baseline: anomalib's ``ReverseDistillation`` / ``Dinomaly`` (its schedule stepped per step: ``SteppedDinomaly``)
  on the split's normal training images only (``--compare``);
- +ArcAD: ``ArcADReverseDistillation`` / ``ArcADDinomaly`` on the split's normal and defective training images,

then tests both on the split's test set (the same images) and prints one row per arm: image and pixel AUROC and
F1-max, in percent, scored with anomalib's own anomaly maps.

The split is section 4.1's (``torch_arcad.coldstart.make_split``: 30% of ``train/good``, defects making 10% of the
training set). The backbones' weights come from the Hugging Face hub unless ``--backbone-weights`` (RD4AD) and
``--encoder-weights`` (Dinomaly) name local files; ``random`` builds random ones, for a run that checks the
plumbing only: its rows then mean nothing, and the script says so.

The paper's setting (a GPU, real weights; 10,000 steps at batch 16 in the paper)::

    python examples/anomalib_coldstart.py --data-root DATA --category tire --compare --steps 10000 \\
        --batch-size 16 --backbone wide_resnet50_2 --image-size 256 \\
        --encoder vit_base_patch14_reg4_dinov2 --dinomaly-size 392

A CPU check of the plumbing with random weights (docs/integration.md gives its time)::

    python examples/anomalib_coldstart.py --data-root DATA --category tire --compare --steps 300 \\
        --backbone resnet18 --image-size 128 --encoder vit_small_patch14_reg4_dinov2 --dinomaly-size 112 \\
        --backbone-weights random --encoder-weights random
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

RANDOM = "random"
MODELS = ("rd", "dinomaly")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, required=True, help="data set root in the MVTec AD layout")
    parser.add_argument("--category", required=True, help="category folder under --data-root, e.g. tire")
    parser.add_argument("--compare", action="store_true", help="also train each model's baseline (normal images)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="default: both")
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps per arm (default 300)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--defects-per-batch", type=int, default=0,
                        help="defective images in every +ArcAD batch (default 0: anomalib's plain shuffle)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the cold-start split")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training runs")
    parser.add_argument("--backbone", default="wide_resnet50_2", help="RD4AD's encoder (timm name)")
    parser.add_argument("--image-size", type=int, default=256, help="RD4AD's input size (default 256)")
    parser.add_argument("--encoder", default="vit_base_patch14_reg4_dinov2", help="Dinomaly's encoder (timm name)")
    parser.add_argument("--dinomaly-size", type=int, default=392,
                        help="Dinomaly's crop, a multiple of 14 (resized to 8/7 of it first, as anomalib; default 392)")
    parser.add_argument("--backbone-weights", default=None,
                        help="RD4AD encoder weights: a local file, 'random', or unset (download from the hub)")
    parser.add_argument("--encoder-weights", default=None,
                        help="Dinomaly encoder weights: a local file, 'random', or unset (download from the hub)")
    parser.add_argument("--num-prototypes", type=int, default=None,
                        help="ArcAD's K (default: suggest_num_prototypes of the patches a batch holds)")
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator (cpu, gpu, auto)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/anomalib_coldstart"))
    args = parser.parse_args(argv)
    if args.dinomaly_size % 14:
        parser.error(f"--dinomaly-size must be a multiple of 14 (the ViT's patch), got {args.dinomaly_size}")
    return args


def evaluator() -> Any:
    from anomalib.metrics import AUROC, Evaluator, F1Max

    return Evaluator(test_metrics=[
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        F1Max(fields=["pred_score", "gt_label"], prefix="image_"),
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_"),
        F1Max(fields=["anomaly_map", "gt_mask"], prefix="pixel_"),
    ])


def build_model(name: str, arcad: bool, args: argparse.Namespace) -> Any:
    """The anomalib model of one arm (baseline: anomalib's class; +ArcAD: torch_arcad's subclass)."""
    import torch_arcad
    from anomalib.models import ReverseDistillation
    from torch_arcad.integrations.anomalib import (
        ArcADDinomaly,
        ArcADReverseDistillation,
        SteppedDinomaly,
        timm_weights,
    )

    common = {"evaluator": evaluator(), "visualizer": False}
    if name == "rd":
        pre = ReverseDistillation.configure_pre_processor(image_size=(args.image_size, args.image_size))
        grid = math.ceil(args.image_size / 32)  # the OCBE output's stride
        if not arcad:
            with timm_weights(args.backbone_weights):
                return ReverseDistillation(backbone=args.backbone, pre_processor=pre, **common)
        k = args.num_prototypes or torch_arcad.suggest_num_prototypes(args.batch_size * grid * grid)
        return ArcADReverseDistillation(backbone=args.backbone, pre_processor=pre, num_prototypes=k,
                                        backbone_weights=args.backbone_weights, **common)
    size = args.dinomaly_size
    pre = SteppedDinomaly.configure_pre_processor(image_size=(size * 8 // 7, size * 8 // 7), crop_size=size)
    if not arcad:
        return SteppedDinomaly(encoder_name=args.encoder, pre_processor=pre, backbone_weights=args.encoder_weights,
                               **common)
    grid = size // 14
    k = args.num_prototypes or torch_arcad.suggest_num_prototypes(args.batch_size * grid * grid)
    return ArcADDinomaly(encoder_name=args.encoder, pre_processor=pre, num_prototypes=k,
                         backbone_weights=args.encoder_weights, **common)


def run_arm(name: str, arcad: bool, args: argparse.Namespace) -> dict[str, Any]:
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything
    from torch_arcad.integrations.anomalib import ColdStartMVTecAD

    seed_everything(args.seed, verbose=False)
    datamodule = ColdStartMVTecAD(
        root=args.data_root, category=args.category, train_batch_size=args.batch_size, eval_batch_size=16,
        num_workers=0, split_seed=args.split_seed, train_defects=arcad,
        defects_per_batch=args.defects_per_batch if arcad else 0,
    )
    model = build_model(name, arcad, args)
    arm = "+ArcAD" if arcad else "baseline"
    folder = args.output_dir / args.category / name / ("arcad" if arcad else "baseline")
    engine = Engine(accelerator=args.accelerator, devices=1, max_steps=args.steps, default_root_dir=folder,
                    logger=False, enable_progress_bar=False, limit_val_batches=0, num_sanity_val_steps=0)
    start = time.perf_counter()
    engine.fit(model, datamodule=datamodule)
    trained = time.perf_counter() - start
    metrics = engine.test(model, datamodule=datamodule, verbose=False)[0]
    elapsed = time.perf_counter() - start
    train = datamodule.train_data.samples
    print(f"[{name} {arm}] {len(train)} training images ({int(train.label_index.sum())} defective), "
          f"{len(datamodule.test_data)} test images; trained {engine.trainer.global_step} steps in {trained:.0f} s, "
          f"tested in {elapsed - trained:.0f} s: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in sorted(metrics.items())),
          flush=True)
    return {"model": name, "arm": arm, "metrics": metrics, "seconds": elapsed, "steps": engine.trainer.global_step}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    try:
        from torch_arcad.integrations.anomalib import BackboneWeightsError
    except ImportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        for arcad in ([False, True] if args.compare else [True]):
            try:
                rows.append(run_arm(name, arcad, args))
            except BackboneWeightsError as error:
                print(f"error: {error}", file=sys.stderr)
                return 2
    print()
    print(f"{args.category}, cold-start split (seed {args.split_seed}), percent:")
    print("| model | arm | I-AUROC | I-F1-max | P-AUROC | P-F1-max | steps | time |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        m = row["metrics"]
        values = [100 * m[f"{level}_{metric}"] for level in ("image", "pixel") for metric in ("AUROC", "F1Max")]
        label = {"rd": f"RD4AD ({args.backbone})", "dinomaly": f"Dinomaly ({args.encoder})"}[row["model"]]
        print(f"| {label} | {row['arm']} | " + " | ".join(f"{v:.1f}" for v in values)
              + f" | {row['steps']} | {row['seconds'] / 60:.1f} min |")
    random = [flag for flag, value, name in (("--backbone-weights", args.backbone_weights, "rd"),
                                             ("--encoder-weights", args.encoder_weights, "dinomaly"))
              if value == RANDOM and name in args.models]
    if random:
        print()
        print(f"The backbones have random weights ({', '.join(f'{f} random' for f in random)}): these rows check "
              "that training and testing run end to end, and say nothing about the detectors or about ArcAD. "
              "Give pretrained weights (a local file, or network access) for numbers that mean something.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
