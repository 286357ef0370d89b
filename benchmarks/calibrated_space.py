"""Where a trained discriminator puts real defects: the calibrated space of one +ArcAD run, patch by patch.

Usage::

    OMP_NUM_THREADS=1 python -m benchmarks.calibrated_space --data-root ../shared/data --category tire \\
        --baseline rd4ad --seed 0 --steps 1000 --image-size 256 --batch-size 16 --threads 1 --output space

One run of the cold-start benchmark (``benchmarks/coldstart``: the same configuration, split and arm) is
trained, then every bottleneck patch of the training and test images is placed in the calibrated space: its
distance to the nearest prototype (``1 - max_k z . mu_k``) and the trained discriminator's probability. The groups:

* ``train_normal``: patches of the training normal images;
* ``train_real``: the patches eq. 9 trains as real anomalies (any defect pixel, the paper's rule);
* ``synthetic``: pseudo-anomalies synthesised from ``train_normal`` with the trained prototypes (eq. 5-6);
* ``test_normal``: patches of the test normal images; ``test_defect``: test patches with a defect pixel.

Reported (``OUT/space.json`` and ``OUT/space.md``):

* per group: patch count, mean distance, mean and median probability;
* the test patch AUROC (defect against normal) of the probability and of the distance;
* the probability's AUROC *at matched distance*: test patches binned by distance (deciles), the AUROC within each
  bin, averaged with the bins' defect counts as weights. Below 50 when the discriminator ranks defects below normal
  patches that lie as far from the prototypes, i.e. it reads a direction, not the distance;
* the mean probability per distance decile of each group (the shape of what it learned);
* the direction of the training defects: ``u = mean(train_real) - mean(train_normal)`` (normalised) and the
  AUROC of the projection ``z . u`` on the test split: whether unseen defects leave the normal patches the way the
  training defects do;
* the noise's signature: the principal subspace of the training normal patches (the fewest components that hold
  ``SUBSPACE_ENERGY`` of their variance) and, per group, the mean share of a patch's deviation from the normal mean
  that lies outside it (``off_subspace``). Eq. 5's isotropic noise puts most of its energy outside a low-rank
  subspace; a defect that moves along the normal patches' own directions does not. Reported with the off-subspace
  share's AUROC for pseudo-anomalies against training normals (how well that signature alone tells them apart) and
  for test defects against test normals, and the discriminator's probability's AUROC at matched off-subspace share.

``--checkpoint FILE`` stores the trained state (and reuses it when the file exists), so the analysis can be run
again without training. The data set is read in place; nothing derived from it belongs in the repository.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from torch_arcad.coldstart import make_split, save_split
from torch_arcad.layout import masks_to_patches
from torch_arcad.metrics import auroc

if __name__ == "__main__" and not __package__:  # run as a file: ``benchmarks`` is importable only as a package
    command = " ".join(["python -m benchmarks.calibrated_space", *sys.argv[1:]])
    sys.exit(f"run this benchmark as a module, from the repository root: {command}")

from benchmarks.coldstart import cli as coldstart_cli, runner as coldstart_runner  # noqa: E402
from benchmarks.coldstart.arms import trainable_arms  # noqa: E402

GROUPS: tuple[str, ...] = ("train_normal", "train_real", "synthetic", "test_normal", "test_defect")
#: Distance bins of the matched-distance AUROC and of the probability curves.
NUM_BINS: int = 10
PERCENT: float = 100.0
#: Seed of the pseudo-anomalies' noise in the analysis.
SYNTHESIS_SEED: int = 0
#: Share of the training normal patches' variance the normal subspace holds.
SUBSPACE_ENERGY: float = 0.95


def normal_subspace(normal: torch.Tensor, energy: float = SUBSPACE_ENERGY) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and orthonormal basis (D, r) of the principal subspace holding ``energy`` of the variance.

    Args:
        normal: (N, D) patches.
        energy: share of the total variance, in (0, 1].

    Returns:
        The mean and the basis (dtype of ``normal``); r is the fewest leading components whose variances sum to
        ``energy``.
    """
    mean = normal.double().mean(0)
    centred = normal.double() - mean
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    share = (singular**2).cumsum(0) / (singular**2).sum()
    rank = int((share < energy).sum()) + 1
    return mean.to(normal.dtype), vh[: min(rank, vh.shape[0])].t().contiguous().to(normal.dtype)


def off_subspace_share(z: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """(N,) share of ``|z - mean|^2`` outside the span of ``basis`` (D, r); 0 for a patch at the mean."""
    deviation = z.double() - mean.double()
    inside = deviation @ basis.double()
    total = (deviation**2).sum(1)
    outside = (total - (inside**2).sum(1)).clamp_min(0)
    return (outside / total.clamp_min(torch.finfo(torch.float64).tiny)).float()


def patch_auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """AUROC of ``scores`` (N,) with ``positive`` (N,) bool; nan when one class is missing."""
    if not bool(positive.any()) or bool(positive.all()):
        return math.nan
    return auroc(scores, positive)


def matched_distance_auroc(
    probability: torch.Tensor, distance: torch.Tensor, positive: torch.Tensor, num_bins: int = NUM_BINS
) -> tuple[float, list[float]]:
    """AUROC of ``probability`` within distance quantile bins, averaged with the bins' positive counts as weights.

    Args:
        probability, distance: (N,) float.
        positive: (N,) bool.
        num_bins: quantile bins of ``distance``.

    Returns:
        The weighted mean AUROC and the per-bin AUROCs (nan where a bin lacks a class, left out of the mean).
    """
    edges = torch.quantile(distance.double(), torch.linspace(0, 1, num_bins + 1, dtype=torch.float64))
    index = torch.bucketize(distance.double(), edges[1:-1], right=True)
    per_bin, weights = [], []
    for b in range(num_bins):
        inside = index == b
        value = patch_auroc(probability[inside], positive[inside])
        per_bin.append(value)
        if math.isfinite(value):
            weights.append((int(positive[inside].sum()), value))
    total = sum(w for w, _ in weights)
    mean = sum(w * v for w, v in weights) / total if total else math.nan
    return mean, per_bin


def decile_curve(distance: torch.Tensor, probability: torch.Tensor, edges: torch.Tensor) -> list[float]:
    """Mean probability of the patches in each distance bin given by ``edges`` (nan for an empty bin)."""
    index = torch.bucketize(distance.double(), edges[1:-1], right=True)
    return [float(probability[index == b].mean()) if bool((index == b).any()) else math.nan
            for b in range(len(edges) - 1)]


@torch.no_grad()
def embed(trained: Any, image_set: Any, cfg: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit bottleneck patches (N * h * w, D) of an image set, their defect flags and their images' labels.

    The detector runs in evaluation mode on the frozen encoder's (cached) features; with several branches
    (ReContrast) the first branch's patches are kept.
    """
    from arcad_harness.cache import get_store
    from arcad_harness.detector import with_features

    model = trained.setup.model
    store = get_store(cfg.feature_cache)
    patches, defects, labels = [], [], []
    for start in range(0, len(image_set), cfg.batch_size):
        index = torch.arange(start, min(start + cfg.batch_size, len(image_set)))
        batch = with_features(image_set.batch(index, cfg.device), model, store, cfg.image_size)
        z = model(batch.images, features=batch.features).z[: len(index)]  # (B, D, h, w), first branch
        b, _, h, w = z.shape
        patches.append(F.normalize(z.flatten(2).transpose(1, 2).reshape(b * h * w, -1).float(), dim=1).cpu())
        flags = masks_to_patches(batch.masks, b, (h, w), 0.0) & (batch.labels != 0).unsqueeze(1)
        defects.append(flags.reshape(-1).cpu())
        labels.append(batch.labels.repeat_interleave(h * w).cpu())
    return torch.cat(patches), torch.cat(defects), torch.cat(labels)


@torch.no_grad()
def analyse(trained: Any, train_set: Any, test_set: Any, cfg: Any) -> dict[str, Any]:
    """The groups, AUROCs, curves and direction of the module docstring for one trained +ArcAD model."""
    arcad = trained.setup.arcad
    if not arcad.prototypes.is_ready:
        raise ValueError("the prototypes were never initialised: train longer or with a smaller K")
    trained.setup.model.eval()
    arcad.eval()
    prototypes = arcad.prototypes.prototypes.float().cpu()
    discriminator = arcad.discriminator.cpu().eval()

    def place(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        distance = 1 - (z @ prototypes.t()).amax(dim=1)
        probability = torch.sigmoid(discriminator(z).float())
        return distance, probability

    z_train, d_train, y_train = embed(trained, train_set, cfg)
    z_test, d_test, y_test = embed(trained, test_set, cfg)
    generator = torch.Generator().manual_seed(SYNTHESIS_SEED)
    normal_train = z_train[y_train == 0]
    synthetic = arcad.synthesizer.cpu()(normal_train, prototypes, generator=generator)
    groups = {
        "train_normal": normal_train,
        "train_real": z_train[d_train],
        "synthetic": synthetic,
        "test_normal": z_test[y_test == 0],
        "test_defect": z_test[d_test],
    }
    placed = {name: place(z) for name, z in groups.items()}
    summary = {
        name: {
            "patches": int(z.shape[0]),
            "distance": float(placed[name][0].mean()),
            "probability": float(placed[name][1].mean()),
            "probability_median": float(placed[name][1].median()),
        }
        for name, z in groups.items()
    }
    test_distance = torch.cat([placed["test_normal"][0], placed["test_defect"][0]])
    test_probability = torch.cat([placed["test_normal"][1], placed["test_defect"][1]])
    def labels(negative: str, positive: str) -> torch.Tensor:
        """(N_neg + N_pos,) bool: False for the rows of group ``negative``, then True for those of ``positive``."""
        counts = torch.tensor([groups[negative].shape[0], groups[positive].shape[0]])
        return torch.tensor([False, True]).repeat_interleave(counts)

    positive = labels("test_normal", "test_defect")
    matched, per_bin = matched_distance_auroc(test_probability, test_distance, positive)
    edges = torch.quantile(test_distance.double(), torch.linspace(0, 1, NUM_BINS + 1, dtype=torch.float64))
    direction = F.normalize(groups["train_real"].mean(0) - groups["train_normal"].mean(0), dim=0)
    test_z = torch.cat([groups["test_normal"], groups["test_defect"]])
    mean, basis = normal_subspace(groups["train_normal"])
    off = {name: off_subspace_share(z, mean, basis) for name, z in groups.items()}
    for name in GROUPS:
        summary[name]["off_subspace"] = float(off[name].mean())
    test_off = torch.cat([off["test_normal"], off["test_defect"]])
    return {
        "groups": summary,
        "test_auroc": {
            "probability": patch_auroc(test_probability, positive),
            "distance": patch_auroc(test_distance, positive),
            "probability_at_matched_distance": matched,
            "probability_per_distance_bin": per_bin,
            "training_defect_direction": patch_auroc(test_z @ direction, positive),
        },
        "train_auroc_probability": patch_auroc(
            torch.cat([placed["train_normal"][1], placed["train_real"][1]]),
            labels("train_normal", "train_real"),
        ),
        "subspace": {
            "rank": int(basis.shape[1]),
            "dim": int(basis.shape[0]),
            "energy": SUBSPACE_ENERGY,
            "synthetic_vs_train_normal_auroc": patch_auroc(
                torch.cat([off["train_normal"], off["synthetic"]]), labels("train_normal", "synthetic")
            ),
            "test_defect_auroc": patch_auroc(test_off, positive),
            "probability_at_matched_off_subspace": matched_distance_auroc(test_probability, test_off, positive)[0],
        },
        "distance_edges": [float(e) for e in edges],
        "curves": {name: decile_curve(placed[name][0], placed[name][1], edges) for name in GROUPS},
    }


def markdown(result: Mapping[str, Any], title: str) -> str:
    """The analysis as Markdown (percent for AUROCs and probabilities)."""
    lines = [f"### {title}", "", "| group | patches | mean distance | mean p | median p | off-subspace share |",
             "|---|---|---|---|---|---|"]
    for name in GROUPS:
        g = result["groups"][name]
        lines.append(f"| {name} | {g['patches']} | {g['distance']:.3f} | {PERCENT * g['probability']:.1f} | "
                     f"{PERCENT * g['probability_median']:.1f} | {PERCENT * g['off_subspace']:.1f} |")
    t = result["test_auroc"]
    sub = result["subspace"]
    lines += [
        "",
        (
            f"Test patch AUROC: probability {PERCENT * t['probability']:.1f}, distance {PERCENT * t['distance']:.1f}, "
            f"probability at matched distance {PERCENT * t['probability_at_matched_distance']:.1f}, projection on "
            f"the training defects' direction {PERCENT * t['training_defect_direction']:.1f}; training patches "
            f"(in-sample) probability {PERCENT * result['train_auroc_probability']:.1f}."
        ),
        "",
        (
            f"Normal subspace: {sub['rank']} of {sub['dim']} components hold {PERCENT * sub['energy']:.0f}% of the "
            f"training normal patches' variance. AUROC of the off-subspace share: pseudo-anomalies against training "
            f"normals {PERCENT * sub['synthetic_vs_train_normal_auroc']:.1f}, test defects against test normals "
            f"{PERCENT * sub['test_defect_auroc']:.1f}; the probability's test AUROC at matched off-subspace share "
            f"{PERCENT * sub['probability_at_matched_off_subspace']:.1f}."
        ),
        "",
        "Probability AUROC per distance decile (test): "
        + ", ".join("n/a" if not math.isfinite(v) else f"{PERCENT * v:.0f}" for v in t["probability_per_distance_bin"]),
        "",
        "Mean p per distance decile (edges " + ", ".join(f"{e:.3f}" for e in result["distance_edges"]) + "):",
        "",
        "| group | " + " | ".join(f"d{b + 1}" for b in range(NUM_BINS)) + " |",
        "|---|" + "---|" * NUM_BINS,
    ]
    for name in GROUPS:
        cells = ["-" if not math.isfinite(v) else f"{PERCENT * v:.0f}" for v in result["curves"][name]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--category", required=True)
    p.add_argument("--baseline", default="rd4ad", choices=coldstart_cli.BASELINES)
    p.add_argument("--arm", default="arcad", choices=[a for a in trainable_arms() if a != "baseline"])
    p.add_argument("--seed", type=int, default=0, help="split seed = training seed")
    p.add_argument("--split", type=Path, default=None, help="a split file (default: made from the seed)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--width", type=int, default=None, help="model width (default: the harness's)")
    p.add_argument("--num-prototypes", type=int, default=None, help="K (default: the harness's)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--checkpoint", type=Path, default=None, help="trained state: written after training, reused")
    p.add_argument("--output", type=Path, required=True)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    coldstart_runner.harness()  # the examples harness, with a clear error when it is not installed
    from arcad_harness.config import resolve_config
    from arcad_harness.data import category_test_samples, load_images, prepare_data, train_samples
    from arcad_harness.detectors import get_detector
    from arcad_harness.training import train_model

    args.output.mkdir(parents=True, exist_ok=True)
    split_path = args.split or args.output / f"split_seed{args.seed}.json"
    if not split_path.is_file():
        save_split(make_split(args.data_root, categories=[args.category], seed=args.seed), split_path)
    given = {"data_root": str(args.data_root.resolve()), "setting": "single", "steps": args.steps,
             "image_size": args.image_size, "batch_size": args.batch_size, "log_every": 100}
    if args.width is not None:
        given["width"] = args.width
    if args.num_prototypes is not None:
        given["num_prototypes"] = args.num_prototypes
    settings = coldstart_runner.resolve_defaults(given)
    cfg = coldstart_runner.make_config(settings, baseline=args.baseline, arm=args.arm, category=args.category,
                                       seed=args.seed, split_path=split_path)
    cfg.validate()
    data = prepare_data(cfg)
    cfg = resolve_config(cfg, synthetic=data.synthetic)
    example = get_detector(cfg.baseline)
    train_set = load_images(train_samples(data, [args.category], with_defects=True), cfg.image_size)
    test_set = load_images(category_test_samples(data, args.category), cfg.image_size)
    if args.checkpoint is not None and args.checkpoint.is_file():
        torch.manual_seed(cfg.seed)
        setup = example.build(cfg)
        state = torch.load(args.checkpoint, map_location="cpu")
        setup.model.load_state_dict(state["model"])
        setup.arcad.load_state_dict(state["arcad"])
        from arcad_harness.training import TrainedModel

        trained = TrainedModel(args.category, [args.category], setup, train_time_s=math.nan)
    else:
        start = time.perf_counter()
        trained = train_model(example, cfg, train_set, args.category, [args.category], print)
        print(f"trained in {time.perf_counter() - start:.0f} s")
        if args.checkpoint is not None:
            torch.save({"model": trained.setup.model.state_dict(), "arcad": trained.setup.arcad.state_dict()},
                       args.checkpoint)
    result = analyse(trained, train_set, test_set, cfg)
    result["config"] = {"category": args.category, "baseline": args.baseline, "arm": args.arm, "seed": args.seed,
                        "steps": args.steps, "image_size": args.image_size, "batch_size": args.batch_size}
    (args.output / "space.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    title = f"{args.category} / {args.baseline} / {args.arm}, seed {args.seed}, {args.steps} steps"
    text = markdown(result, title)
    (args.output / "space.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
