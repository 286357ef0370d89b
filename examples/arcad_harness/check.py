"""Should I use ArcAD on my split? A check on the split's own training defects, before any test number is trusted.

Usage::

    python -m arcad_harness.check --data-root DIR --category NAME [--baseline rd4ad] [--folds 3] \\
        [--split-seed 0] [--steps 1000] [--image-size 256] [--threads 1] [--output OUT]

The defective training images of the cold-start split are divided into ``--folds`` folds, and a share of its normal
training images (``--holdout-normal``, a quarter by default) is withheld from every run. The baseline never sees a
defect, so it is trained once, on the remaining normal images. For each fold, the detector with ArcAD is trained on
the remaining normal images and the other folds' defects. Both are scored on the same images: the withheld normal
images and the fold's withheld defects, which neither has seen. The check reports, for each of ArcAD's score kinds,
the difference to the baseline per fold and its mean with the standard error over the folds, and a plain
recommendation: use ArcAD (with which score) or keep the detector alone. It costs ``1 + folds`` training runs.

The test split chooses nothing here: the check reads the training part of the split only.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import random
import statistics
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch_arcad.coldstart import make_split, save_split
from torch_arcad.datasets.mvtec import split_samples

from torch_arcad import PRESETS
from torch_arcad.config import CALIBRATE

from .config import DEFAULT_PRESET, ExperimentConfig, resolve_config
from .data import load_images, prepare_data, train_samples
from .detectors.registry import get_detector
from .evaluation import evaluate_category, fit_fusion
from .training import train_model

__all__ = ["DEFAULT_FOLDS", "make_folds", "main", "recommend", "run_check", "summarize"]

#: Folds over the defective training images by default.
DEFAULT_FOLDS: int = 3
#: Share of the normal training images withheld from every run by default, to score against.
DEFAULT_NORMAL_SHARE: float = 0.25
#: The metrics compared (percent points in the report).
METRICS: tuple[str, ...] = ("i_auroc", "p_auroc", "p_f1_max", "aupro")
#: ArcAD's score kinds the check compares with the baseline's reconstruction score.
KINDS: tuple[str, ...] = ("recon", "prototype", "discriminator")
PERCENT: float = 100.0


def make_folds(
    split: Mapping[str, Any], category: str, folds: int, *, normal_share: float = DEFAULT_NORMAL_SHARE, seed: int = 0
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The manifests of the check: the baseline's, and one per fold for ArcAD.

    Args:
        split: a cold-start manifest (:func:`torch_arcad.coldstart.make_split`).
        category: the category checked.
        folds: number of folds over the defective training images, ``2 <= folds <= defective images``.
        normal_share: share of the normal training images withheld to score against, in (0, 1).
        seed: seed of the shuffles.

    Returns:
        ``(baseline, per_fold)``: manifests in the format of the split. Every manifest's ``test`` holds the
        withheld normal images plus, for a fold, that fold's defects (the baseline's ``test`` holds all defects, the
        fold test sets are subsets of it); ``train`` holds the other normal images and, for a fold, the other
        folds' defects. No image is both trained on and scored within a manifest.
    """
    entry = split["categories"].get(category)
    if entry is None:
        raise ValueError(f"category {category!r} is not in the split; it has {sorted(split['categories'])}")
    normal = [s for s in entry["train"] if s["label"] == 0]
    defective = [s for s in entry["train"] if s["label"] != 0]
    if not isinstance(folds, int) or isinstance(folds, bool) or not 2 <= folds <= len(defective):
        raise ValueError(
            f"folds must be an int from 2 to the number of defective training images ({len(defective)}), got {folds!r}"
        )
    if not 0.0 < normal_share < 1.0:
        raise ValueError(f"normal_share must be in (0, 1), got {normal_share}")
    rng = random.Random(seed)
    normal, defective = normal[:], defective[:]
    rng.shuffle(normal)
    rng.shuffle(defective)
    withheld = max(1, round(normal_share * len(normal)))
    if withheld >= len(normal):
        raise ValueError(f"{category!r} has {len(normal)} normal training images: too few to withhold {withheld}")
    test_normal, train_normal = normal[:withheld], normal[withheld:]
    fold_of = [defective[i::folds] for i in range(folds)]

    def manifest(train: list[dict[str, Any]], test: list[dict[str, Any]]) -> dict[str, Any]:
        out = {k: copy.deepcopy(v) for k, v in split.items() if k != "categories"}
        out["categories"] = {category: {"train": copy.deepcopy(train), "test": copy.deepcopy(test)}}
        return out

    baseline = manifest(train_normal, test_normal + defective)
    per_fold = [
        manifest(train_normal + [s for j, f in enumerate(fold_of) if j != i for s in f], test_normal + fold_of[i])
        for i in range(folds)
    ]
    return baseline, per_fold


def summarize(baseline: Sequence[Mapping[str, Mapping[str, float]]],
              arcad: Sequence[Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """The differences ArcAD minus baseline per fold, their mean and standard error.

    Args:
        baseline: per fold, the baseline's metrics by score kind (``"recon"`` is used).
        arcad: per fold, ArcAD's metrics by score kind.

    Returns:
        ``{kind: {metric: {"mean", "sem", "wins", "folds", "per_fold"}}}`` in percent points (``sem`` is NaN with
        one fold; ``wins`` counts folds where ArcAD is higher).
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for kind in KINDS:
        if not all(kind in a for a in arcad):
            continue
        out[kind] = {}
        for metric in METRICS:
            diffs = [PERCENT * (a[kind][metric] - b["recon"][metric]) for a, b in zip(arcad, baseline)]
            sem = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
            out[kind][metric] = {
                "mean": statistics.fmean(diffs), "sem": sem, "wins": sum(d > 0 for d in diffs),
                "folds": len(diffs), "per_fold": diffs,
            }
    return out


def recommend(summary: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, Any]:
    """A plain recommendation from :func:`summarize`.

    ArcAD is recommended with the score kind whose image-level gain (I-AUROC) is largest, when that gain is above
    its standard error and the pixel precision (P-F1-max) does not fall by more than its own standard error;
    otherwise the detector alone is recommended.

    Returns:
        ``{"use_arcad": bool, "score": kind or None, "text": str}``.
    """
    def gain(kind: str) -> float:
        return summary[kind]["i_auroc"]["mean"]

    best = max(summary, key=gain)
    image, pixel = summary[best]["i_auroc"], summary[best]["p_f1_max"]
    image_sem = 0.0 if math.isnan(image["sem"]) else image["sem"]
    pixel_sem = 0.0 if math.isnan(pixel["sem"]) else pixel["sem"]
    use = image["mean"] - image_sem > 0 and pixel["mean"] + pixel_sem >= 0
    if use:
        text = (f"use ArcAD with the {best!r} score: I-AUROC {image['mean']:+.1f} +- {image_sem:.1f}, P-F1-max "
                f"{pixel['mean']:+.1f} +- {pixel_sem:.1f} on the withheld defects")
    else:
        text = (f"keep the detector alone: ArcAD's best score ({best!r}) gives I-AUROC {image['mean']:+.1f} +- "
                f"{image_sem:.1f} and P-F1-max {pixel['mean']:+.1f} +- {pixel_sem:.1f} on the withheld defects, not a "
                "gain beyond the uncertainty without a pixel-level cost")
    return {"use_arcad": bool(use), "score": best if use else None, "text": text}


def _train_and_score(cfg: ExperimentConfig, manifest: Mapping[str, Any], category: str, folder: Path, name: str,
                     tests: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, dict[str, float]]], float]:
    """Train one arm on ``manifest``'s training part and score it on each of ``tests``' test parts."""
    path = save_split(dict(manifest), folder / f"{name}.json")
    run_cfg = dataclasses.replace(cfg, split_path=str(path), categories=[category], setting="single",
                                  output_dir=None, figures=False, fusion_holdout=0)
    data = prepare_data(run_cfg)
    run_cfg = resolve_config(run_cfg, synthetic=data.synthetic)
    log = print if run_cfg.verbose else (lambda message: None)
    train_set = load_images(train_samples(data, [category], with_defects=run_cfg.arcad), run_cfg.image_size)
    trained = train_model(get_detector(run_cfg.baseline), run_cfg, train_set, category, [category], log)
    fusion = fit_fusion(trained, train_set, run_cfg, None) if trained.setup.arcad is not None else None
    scores = []
    for test in tests:
        samples = split_samples(test, "test", categories=[category], root=data.root)
        scores.append(evaluate_category(trained, fusion, category, samples, run_cfg, False).metrics)
    return scores, trained.train_time_s


def run_check(cfg: ExperimentConfig, category: str, folds: int = DEFAULT_FOLDS, *,
              normal_share: float = DEFAULT_NORMAL_SHARE) -> dict[str, Any]:
    """Run the check of the module docstring for one category.

    Args:
        cfg: the harness configuration (detector, data root or split, sizes, steps; ``arcad`` is set per run).
        category: the category checked.
        folds: folds over the split's defective training images.
        normal_share: share of the normal training images withheld to score against.

    Returns:
        ``{"category", "folds", "runs": 1 + folds, "train_time_s", "baseline": [per-fold metrics], "arcad":
        [per-fold metrics], "summary": summarize(...), "recommendation": recommend(...)}``.
    """
    cfg.validate()
    split = prepare_data(dataclasses.replace(cfg, categories=[category])).split
    baseline_manifest, fold_manifests = make_folds(split, category, folds, normal_share=normal_share, seed=cfg.seed)
    with tempfile.TemporaryDirectory(prefix="arcad-check-") as tmp:
        folder = Path(tmp)
        baseline, train_time = _train_and_score(dataclasses.replace(cfg, arcad=False), baseline_manifest, category,
                                                folder, "baseline", fold_manifests)
        arcad = []
        for i, manifest in enumerate(fold_manifests):
            (scores,), seconds = _train_and_score(dataclasses.replace(cfg, arcad=True), manifest, category, folder,
                                                  f"fold{i}", [manifest])
            arcad.append(scores)
            train_time += seconds
    summary = summarize(baseline, arcad)
    return {"category": category, "folds": folds, "runs": 1 + folds, "train_time_s": train_time,
            "baseline": baseline, "arcad": arcad, "summary": summary, "recommendation": recommend(summary)}


def report(result: Mapping[str, Any]) -> str:
    """The check's result as text: one table of mean differences (percent points) and the recommendation."""
    lines = [f"{result['category']}: ArcAD minus the detector alone on withheld defects, {result['folds']} folds "
             f"({result['runs']} training runs), mean +- standard error (folds where ArcAD is higher)",
             "| ArcAD's score | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for kind, metrics in result["summary"].items():
        cells = [f"{m['mean']:+.1f} +- {m['sem']:.1f} ({m['wins']}/{m['folds']})" for m in metrics.values()]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Recommendation: " + result["recommendation"]["text"])
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m arcad_harness.check", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True, help="data set root in the MVTec AD layout")
    p.add_argument("--category", required=True)
    p.add_argument("--baseline", default="rd4ad", help="the detector (a name of arcad_harness's registry)")
    p.add_argument("--folds", type=int, default=DEFAULT_FOLDS)
    p.add_argument("--holdout-normal", type=float, default=DEFAULT_NORMAL_SHARE,
                   help="share of the normal training images withheld to score against")
    p.add_argument("--split-seed", type=int, default=0, help="the cold-start split's seed (also the training seed)")
    p.add_argument("--split", default=None, help="a cold-start manifest instead of --split-seed")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--preset", choices=tuple(PRESETS), default=DEFAULT_PRESET,
                   help="ArcAD preset of the runs with ArcAD (default: %(default)s)")
    p.add_argument("--calibrate", choices=CALIBRATE, default=None,
                   help="ArcAD's calibrate setting: all (the presets) or missed (docs/results.md)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--output", default=None, help="write the result as JSON here")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    split = args.split
    if split is None:
        manifest = make_split(args.data_root, categories=[args.category], seed=args.split_seed)
        split = str(save_split(manifest, Path(tempfile.mkdtemp(prefix="arcad-check-split-")) / "split.json"))
    cfg = ExperimentConfig(baseline=args.baseline, data_root=args.data_root, split_path=split,
                           categories=[args.category], seed=args.split_seed, split_seed=args.split_seed,
                           steps=args.steps, image_size=args.image_size, batch_size=args.batch_size,
                           preset=args.preset, device=args.device, verbose=not args.quiet, figures=False,
                           arcad_options={} if args.calibrate is None else {"calibrate": args.calibrate})
    result = run_check(cfg, args.category, args.folds, normal_share=args.holdout_normal)
    print(report(result))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
