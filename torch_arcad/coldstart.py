"""The cold-start split of ArcAD (section 4.1): few normal images plus a handful of real anomalies.

From a standard MVTec-layout split, per category:

1. ``n_normal = max(1, round_half_up(normal_fraction * #train/good))`` normal training images are
   drawn from ``train/good``.
2. ``n_anomaly = max(1, ceil(anomaly_ratio * n_normal / (1 - anomaly_ratio)))`` defective test images
   are moved into training, so that they make up ``anomaly_ratio`` of the new training set. Only
   defects with a non-empty mask are eligible (an empty mask carries no pixel supervision); when fewer
   are available the number is capped and a warning is issued.
3. The test set is everything else: the unused ``train/good`` images, all of ``test/good`` and the
   defects that were not drawn.

Both roundings allow a tolerance of :data:`ROUNDING_TOLERANCE` against floating-point error, so
``0.3 * 210`` gives 63 and ``0.1 * 63 / 0.9`` gives 7. With the paper's ``normal_fraction=0.3`` and
``anomaly_ratio=0.10``, Magnetic Tile (762 train/good, 190 test/good, 392 defects) gives 229 normal +
26 defective training images and 1,089 test images; MVTec 3D-AD tire (210, 25, 87) gives 63 + 7 and 252.

Sampling is deterministic for a seed: each category draws from ``numpy.random.default_rng`` seeded
with ``(seed, crc32(category name))``, and every file list is sorted by name first. Defects are
stratified over defect kinds by the largest-remainder rule: kind ``k`` with ``c_k`` eligible images
gets ``floor(n_anomaly * c_k / C)`` images (``C = sum c_k``), and the remaining images go one each to
the kinds with the largest fractional parts (ties broken by a seeded random order of the kinds). So
every kind is represented whenever ``n_anomaly`` reaches the number of kinds and the proportions allow.

The split is stored as a JSON manifest::

    {"format": "torch-arcad-coldstart", "version": 1, "root": "/abs/path",
     "normal_fraction": 0.3, "anomaly_ratio": 0.1, "seed": 0,
     "categories": {"<category>": {"train": [sample, ...], "test": [sample, ...]}}}

with ``sample = {"image": "<category>/test/crack/000.png", "mask": "<category>/ground_truth/crack/000_mask.png"
or null, "label": 0 | 1, "defect": "good" | "<kind>"}`` and paths relative to ``root``.

The manifest is read, validated and written by the MVTec reader, :mod:`torch_arcad.datasets.mvtec`
(:func:`load_split`, :func:`save_split`, :func:`split_samples`, re-exported here), so that
``MVTecDataset.from_split`` needs nothing from this module: imports run from the protocol to the reader only.

Command line (also installed as ``torch-arcad-coldstart``)::

    python -m torch_arcad.coldstart --root DIR --out split.json --normal-fraction 0.3 \\
        --anomaly-ratio 0.10 --seed 0 [--categories a b ...]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

from torch_arcad.datasets.mvtec import (
    ANOMALY_LABEL,
    PARTS,
    SPLIT_FORMAT,
    SPLIT_VERSION,
    CategoryScan,
    MVTecSample,
    list_categories,
    load_split,
    save_split,
    scan_category,
    split_samples,
)

__all__ = [
    "DEFAULT_ANOMALY_RATIO",
    "DEFAULT_NORMAL_FRACTION",
    "PARTS",
    "SPLIT_FORMAT",
    "SPLIT_VERSION",
    "load_split",
    "main",
    "make_split",
    "num_train_anomalies",
    "num_train_normals",
    "save_split",
    "split_samples",
    "split_summary",
    "stratified_counts",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Fraction of ``train/good`` kept as training normals in the paper.
DEFAULT_NORMAL_FRACTION: float = 0.3
#: Share of anomalies in the cold-start training set in the paper (0.05 for VisA and MANTA).
DEFAULT_ANOMALY_RATIO: float = 0.10
#: Slack for floating-point error in the two roundings (e.g. ``0.1 * 63 / 0.9 = 7.000000000000001``).
ROUNDING_TOLERANCE: float = 1e-9


# ------------------------------------------------------------------------------------------- counts


def _check_fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number in (0, 1), got {type(value).__name__}")
    if not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must lie in the open interval (0, 1), got {value}")
    return float(value)


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def num_train_normals(num_good: int, normal_fraction: float = DEFAULT_NORMAL_FRACTION) -> int:
    """Training normals: ``max(1, round_half_up(normal_fraction * num_good))``.

    Args:
        num_good: number of ``train/good`` images (>= 1).
        normal_fraction: in (0, 1).

    Returns:
        An int in ``[1, num_good]``.
    """
    _check_fraction("normal_fraction", normal_fraction)
    if _check_count("num_good", num_good) < 1:
        raise ValueError("num_good must be >= 1: the category has no train/good images to split")
    return max(1, min(num_good, math.floor(normal_fraction * num_good + 0.5 + ROUNDING_TOLERANCE)))


def num_train_anomalies(num_normal: int, anomaly_ratio: float = DEFAULT_ANOMALY_RATIO) -> int:
    """Training anomalies so that they are ``anomaly_ratio`` of the training set, before capping:
    ``max(1, ceil(anomaly_ratio * num_normal / (1 - anomaly_ratio)))``.

    Args:
        num_normal: number of training normals (>= 1).
        anomaly_ratio: in (0, 1).
    """
    _check_fraction("anomaly_ratio", anomaly_ratio)
    if _check_count("num_normal", num_normal) < 1:
        raise ValueError("num_normal must be >= 1")
    return max(1, math.ceil(anomaly_ratio * num_normal / (1.0 - anomaly_ratio) - ROUNDING_TOLERANCE))


def stratified_counts(
    available: Mapping[str, int], total: int, rng: np.random.Generator | None = None
) -> dict[str, int]:
    """Split ``total`` draws over kinds proportionally to ``available`` (largest-remainder rule).

    Kind ``k`` gets ``floor(total * c_k / C)``, then the leftover draws go one each to the kinds with
    the largest fractional parts; ties are broken by a random order drawn from ``rng`` (or by the
    sorted kind names when ``rng`` is ``None``). No kind gets more than it has.

    Args:
        available: kind -> number of eligible images (>= 0).
        total: number of draws, at most ``sum(available.values())``.
        rng: generator for tie-breaking.

    Returns:
        kind -> number of draws, summing to ``total``.
    """
    kinds = sorted(available)
    counts = np.array([_check_count(f"available[{k!r}]", available[k]) for k in kinds], dtype=np.int64)
    pool = int(counts.sum())
    if _check_count("total", total) > pool:
        raise ValueError(f"total must be <= the number of available images ({pool}), got {total}")
    if total == 0:
        return {k: 0 for k in kinds}
    numerators = total * counts  # exact integer arithmetic: quota_k = numerators_k / pool
    quotas = numerators // pool
    remainders = numerators - quotas * pool
    tie_order = rng.permutation(len(kinds)) if rng is not None else np.arange(len(kinds))
    # Sort by remainder (descending), then by the tie order; lexsort's last key is the primary one.
    order = np.lexsort((tie_order, -remainders))
    leftover = total - int(quotas.sum())
    quotas[order[:leftover]] += 1
    return {k: int(q) for k, q in zip(kinds, quotas)}


# ------------------------------------------------------------------------------------------- splitting


def _category_rng(seed: int, category: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(category.encode("utf-8"))]))


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _sample_record(sample: MVTecSample, root: Path) -> dict[str, Any]:
    return {
        "image": _relative(sample.image, root),
        "mask": None if sample.mask is None else _relative(sample.mask, root),
        "label": int(sample.label),
        "defect": sample.defect,
    }


def _split_category(
    scan: CategoryScan, normal_fraction: float, anomaly_ratio: float, seed: int, include_empty_masks: bool
) -> tuple[list[MVTecSample], list[MVTecSample], dict[str, Any]]:
    rng = _category_rng(seed, scan.category)
    goods = scan.train_good
    n_normal = num_train_normals(len(goods), normal_fraction)
    chosen_normals = set(rng.choice(len(goods), size=n_normal, replace=False).tolist())
    train_normals = [s for i, s in enumerate(goods) if i in chosen_normals]
    rest_normals = [s for i, s in enumerate(goods) if i not in chosen_normals]

    empty = set(scan.empty_masks)
    eligible: dict[str, list[MVTecSample]] = {}
    for kind, samples in scan.defects_by_kind().items():
        eligible[kind] = [s for s in samples if s.mask is not None and (include_empty_masks or s.mask not in empty)]
    n_eligible = sum(len(v) for v in eligible.values())
    wanted = num_train_anomalies(n_normal, anomaly_ratio)
    n_anomaly = min(wanted, n_eligible)
    if n_anomaly < wanted:
        warnings.warn(
            f"category {scan.category!r}: {wanted} training anomalies are needed for anomaly_ratio={anomaly_ratio}, "
            f"but only {n_eligible} defect images with a non-empty mask exist; using {n_anomaly}",
            stacklevel=3,
        )
    per_kind = stratified_counts({k: len(v) for k, v in eligible.items()}, n_anomaly, rng)
    chosen_defects: set[Path] = set()
    for kind in sorted(eligible):
        pool = eligible[kind]
        if per_kind[kind]:
            picks = rng.choice(len(pool), size=per_kind[kind], replace=False)
            chosen_defects.update(pool[int(i)].image for i in picks)
    train_defects = [s for s in scan.test_defects if s.image in chosen_defects]
    rest_defects = [s for s in scan.test_defects if s.image not in chosen_defects]

    train = train_normals + train_defects
    test = rest_normals + scan.test_good + rest_defects
    info = {
        "requested_anomalies": wanted,
        "per_kind": per_kind,
        "empty_masks": len(scan.empty_masks),
    }
    return train, test, info


def make_split(
    root: PathLike,
    *,
    categories: Sequence[str] | None = None,
    normal_fraction: float = DEFAULT_NORMAL_FRACTION,
    anomaly_ratio: float = DEFAULT_ANOMALY_RATIO,
    seed: int = 0,
    allow_missing_masks: bool = False,
    include_empty_masks: bool = False,
    verbose: bool = False,
) -> dict[str, Any]:
    """Build the cold-start split manifest of a data set in the MVTec AD layout.

    Args:
        root: data set root.
        categories: categories to split (default: all, from
            :func:`~torch_arcad.datasets.mvtec.list_categories`).
        normal_fraction: share of ``train/good`` kept as training normals, in (0, 1); 0.3 in the paper.
        anomaly_ratio: share of anomalies in the new training set, in (0, 1); 0.10 in the paper
            (0.05 for VisA and MANTA).
        seed: non-negative int; the same seed gives the same manifest.
        allow_missing_masks: accept defect images without a mask (they can only go to the test set).
        include_empty_masks: let defects whose mask is all zero be drawn for training too.
        verbose: print the one-line summary of each category (see :func:`split_summary`).

    Returns:
        The manifest dict (see the module docstring); ``json``-serialisable.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: a fraction outside (0, 1); an unknown category; a category that is not in the
            MVTec layout, has no ``train/good`` images, or misses masks.
    """
    normal_fraction = _check_fraction("normal_fraction", normal_fraction)
    anomaly_ratio = _check_fraction("anomaly_ratio", anomaly_ratio)
    seed = _check_count("seed", seed)
    root_path = Path(root).expanduser()
    available = list_categories(root_path)
    if categories is None:
        names = available
    else:
        names = [categories] if isinstance(categories, str) else list(categories)
        if not names:
            raise ValueError("categories must name at least one category, got an empty list")
        unknown = [c for c in names if c not in available]
        if unknown:
            raise ValueError(
                f"unknown categories {unknown} under {str(root_path)!r}; available: {', '.join(available)}"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"categories must not repeat, got {names}")
    root_abs = root_path.resolve()
    manifest: dict[str, Any] = {
        "format": SPLIT_FORMAT,
        "version": SPLIT_VERSION,
        "root": str(root_abs),
        "normal_fraction": normal_fraction,
        "anomaly_ratio": anomaly_ratio,
        "seed": seed,
        "categories": {},
    }
    for name in names:
        scan = scan_category(root_abs, name, allow_missing_masks=allow_missing_masks)
        train, test, info = _split_category(scan, normal_fraction, anomaly_ratio, seed, include_empty_masks)
        manifest["categories"][name] = {
            "train": [_sample_record(s, root_abs) for s in train],
            "test": [_sample_record(s, root_abs) for s in test],
        }
        if verbose:
            print(split_summary(manifest, name, empty_masks=info["empty_masks"]))
    return manifest


def split_summary(split: Mapping[str, Any], category: str, *, empty_masks: int | None = None) -> str:
    """One line describing a category of a manifest, e.g.
    ``tire: train 63 normal + 7 defective (combined 1, contamination 2, ...); test 252 (172 normal + 80 defective)``.
    """
    entry = split["categories"][category]
    train, test = entry["train"], entry["test"]
    train_defects = [s["defect"] for s in train if s["label"] == ANOMALY_LABEL]
    kinds = sorted(set(train_defects))
    per_kind = ", ".join(f"{k} {train_defects.count(k)}" for k in kinds)
    n_test_anomalous = sum(1 for s in test if s["label"] == ANOMALY_LABEL)
    line = (
        f"{category}: train {len(train) - len(train_defects)} normal + {len(train_defects)} defective"
        f"{f' ({per_kind})' if per_kind else ''}; test {len(test)} "
        f"({len(test) - n_test_anomalous} normal + {n_test_anomalous} defective)"
    )
    if empty_masks:
        line += f"; {empty_masks} defect image(s) with an empty mask"
    return line


# ------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torch-arcad-coldstart",
        description="Write the ArcAD cold-start split (section 4.1) of a data set in the MVTec AD layout as JSON.",
    )
    parser.add_argument("--root", required=True, help="data set root (<root>/<category>/train/good, ...)")
    parser.add_argument("--out", required=True, help="output JSON manifest")
    parser.add_argument(
        "--normal-fraction", type=float, default=DEFAULT_NORMAL_FRACTION,
        help="share of train/good kept as training normals (default: %(default)s)",
    )
    parser.add_argument(
        "--anomaly-ratio", type=float, default=DEFAULT_ANOMALY_RATIO,
        help="share of anomalies in the new training set (default: %(default)s; 0.05 for VisA and MANTA)",
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    parser.add_argument("--categories", nargs="+", default=None, help="categories to split (default: all)")
    parser.add_argument(
        "--allow-missing-masks", action="store_true", help="accept defect images without a mask (kept in the test set)"
    )
    parser.add_argument(
        "--include-empty-masks", action="store_true", help="let defects with an all-zero mask be drawn for training"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status (0 success, 2 bad input)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        split = make_split(
            args.root,
            categories=args.categories,
            normal_fraction=args.normal_fraction,
            anomaly_ratio=args.anomaly_ratio,
            seed=args.seed,
            allow_missing_masks=args.allow_missing_masks,
            include_empty_masks=args.include_empty_masks,
            verbose=True,
        )
        out = save_split(split, args.out)
    except (ValueError, TypeError, OSError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
