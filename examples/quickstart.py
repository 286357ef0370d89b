"""Quickstart: RD4AD with and without ArcAD on the generated synthetic data, side by side.

No download and no data set needed: the synthetic MVTec-layout data set (three categories: grid, fabric, washer) is
generated once into the cache (``$TORCH_ARCAD_CACHE`` or ``~/.cache/torch_arcad``), the cold-start split is made
(30% of the normal training images, plus defects moved in to make 10% of the training set), and the same
RD4AD-style detector (frozen EfficientNet-Lite0 from its packaged checkpoint) is trained twice, each time as one
model for all three categories (the paper's multi-class setting): on the training normals alone (the baseline)
and on the whole cold-start training set with ArcAD. Both are evaluated per category on the same test images; the
table shows the baseline's reconstruction score against +ArcAD's, then the mean over categories of every score
kind, and a short reading of those numbers.

The generated defects are drawn at reduced contrast (``defect_strength``, see
:func:`torch_arcad.datasets.make_synthetic_dataset`), so that the baseline is off the ceiling and there is room to
see what ArcAD changes.

Usage::

    python examples/quickstart.py                  # a few minutes on a 2-core CPU (see examples/README.md)
    python examples/quickstart.py --tiny           # seconds: a smoke test of the whole pipeline
    python examples/quickstart.py --score fused    # compare with ArcAD's fused score instead
    python examples/quickstart.py --threads 2      # torch threads (default: 1 on <= 2 cores, else up to 4)

Outputs land in ``runs/quickstart`` (``results.md``, ``results.json``, and per arm the figures).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from arcad_harness import SCORE_KINDS, ExperimentConfig, run_comparison, tiny_config

#: Sized for a laptop CPU: one model per arm for the three categories, 128 px synthetic images (8 x 8 bottleneck
#: grid), 150 steps of batch 16.
SETTING: str = "multi"
IMAGE_SIZE: int = 128
STEPS: int = 150
BATCH_SIZE: int = 16
LOG_EVERY: int = 50
#: Default torch threads: one on a machine of at most two cores (two threads there oversubscribe the cores as soon
#: as anything else runs), otherwise up to four.
SMALL_MACHINE_CORES: int = 2
MAX_DEFAULT_THREADS: int = 4
#: Metrics of the summary, as stored (fractions) and as printed.
METRICS: dict[str, str] = {"i_auroc": "I-AUROC", "p_auroc": "P-AUROC", "p_f1_max": "P-F1-max", "aupro": "AUPRO"}
#: Differences (percentage points) smaller than this are called "about the same" in the reading.
NEGLIGIBLE_POINTS: float = 0.5
SUMMARY_MD: str = "summary.md"


def default_threads(cores: int | None = None) -> int:
    """Torch threads for this machine: 1 with at most two cores, else ``min(4, cores)``."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return 1 if cores <= SMALL_MACHINE_CORES else min(MAX_DEFAULT_THREADS, cores)


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


def _points(value: float) -> float:
    return 100.0 * value


def summary_table(combined: Mapping[str, Any]) -> str:
    """Mean over categories of every score kind: the baseline's ``recon`` row, then one row per +ArcAD score kind
    with its difference to the baseline in brackets (percent)."""
    base = combined["baseline"]["mean"]["recon"]
    header = ["score (mean over categories)"] + list(METRICS.values())
    rows = [["baseline: recon"] + [f"{_points(base[m]):.1f}" for m in METRICS]]
    for kind in combined["arcad"]["score_kinds"]:
        ours = combined["arcad"]["mean"][kind]
        rows.append(
            [f"+ArcAD: {kind}"]
            + [f"{_points(ours[m]):.1f} ({_points(ours[m] - base[m]):+.1f})" for m in METRICS]
        )
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _change(delta: float) -> str:
    if abs(delta) < NEGLIGIBLE_POINTS:
        return f"about the same ({delta:+.1f})"
    return f"{'higher' if delta > 0 else 'lower'} by {abs(delta):.1f}"


def reading(combined: Mapping[str, Any]) -> str:
    """A few sentences computed from the numbers: what ArcAD changed with the paper's score, per metric, and which
    score kind does best."""
    base = combined["baseline"]["mean"]["recon"]
    arcad = combined["arcad"]["mean"]
    base_i = _points(base["i_auroc"])
    ceiling = " (near the ceiling: little room to improve)" if base_i >= 97.0 else ""
    parts = [f"The baseline reaches I-AUROC {base_i:.1f}{ceiling}."]
    deltas = {m: _points(arcad["recon"][m] - base[m]) for m in METRICS}
    better = [METRICS[m] for m, d in deltas.items() if d >= NEGLIGIBLE_POINTS]
    worse = [METRICS[m] for m, d in deltas.items() if d <= -NEGLIGIBLE_POINTS]
    parts.append(
        "With the paper's inference score (recon), +ArcAD is "
        + "; ".join(f"{METRICS[m]} {_change(d)}" for m, d in deltas.items())
        + f": better on {len(better)} of {len(METRICS)} metrics"
        + (f", worse on {', '.join(worse)}" if worse else "")
        + "."
    )
    best = []
    for m, label in METRICS.items():
        kind = max(arcad, key=lambda k, m=m: arcad[k][m])
        best.append(f"{label} {kind} ({_points(arcad[kind][m]):.1f})")
    parts.append("Best +ArcAD score kind per metric: " + ", ".join(best) + ".")
    parts.append(
        "This is one seed and one split of a small generated data set; docs/results.md has several seeds on real "
        "defects."
    )
    return " ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; returns the exit status."""
    parser = argparse.ArgumentParser(description="RD4AD with and without ArcAD on synthetic data, side by side.")
    parser.add_argument("--output", default="runs/quickstart", help="output folder (default: %(default)s)")
    parser.add_argument("--score", choices=SCORE_KINDS, default="recon", help="+ArcAD score shown (default: recon)")
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke run (tiny images, 3 steps)")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="torch CPU threads (default here: %(default)s; 1 on machines of <= 2 cores)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()} (--threads)", flush=True)
    combined = run_comparison(quickstart_config(args.output, args.score, not args.no_figures, args.tiny))
    summary = summary_table(combined)
    text = reading(combined)
    print("\nevery score kind, mean over categories, percent (+ArcAD - baseline):", flush=True)
    print(summary, flush=True)
    print("\n" + text, flush=True)
    output = Path(args.output).expanduser()
    output.mkdir(parents=True, exist_ok=True)
    (output / SUMMARY_MD).write_text(
        "# Quickstart summary\n\nEvery score kind, mean over categories, percent (+ArcAD - baseline).\n\n"
        + summary + "\n\n" + text + "\n",
        encoding="utf-8",
    )
    print(f"wrote {output / SUMMARY_MD}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
