"""Command line of the cold-start benchmark: ``python -m benchmarks.coldstart``.

Usage::

    python -m benchmarks.coldstart --data-root DIR --output OUT [--categories a b] \\
        [--baselines rd4ad dinomaly recontrast] [--seeds 0 1] [--arms baseline arcad ...] [--steps N] \\
        [--image-size S] [--batch-size B] [--num-prototypes K] [--lambdas SPM DGC CLS] [--preset paper|official] \\
        [--threads T] [--resume-every N] [--stored DIR ...] [--export DIR]
    python -m benchmarks.coldstart --quick --output OUT                     # seconds, synthetic data
    python -m benchmarks.coldstart --stored benchmarks/results/bench256 --tables-only --output OUT   # no data
    python -m benchmarks.coldstart --stored benchmarks/results/bench256 --tables-only \\
        --write-docs docs/results.md docs/investigations/ablation.md README.md       # the published pages

Training: every category x detector x arm x seed is trained on the seed's cold-start split (``runner``), each run
stored in ``OUT/runs/<category>/<detector>/<arm>/seed<s>.json``; runs already in ``OUT`` or a ``--stored`` folder
are not run again (their settings must equal these; the data folder's location may differ). ``--resume-every N``
keeps each run's training state every N steps so that a run stopped in the middle continues from there.
``--export DIR`` writes every run of the tables to ``DIR/runs`` in compact form (metrics and settings only).

``--tables-only`` trains nothing and needs no data: the tables are built from the runs of ``OUT`` and the
``--stored`` folders alone (by default every category, detector and seed they hold; the settings given on the
command line, if any, must match theirs, and the runs of the tables must share one setting). The tables go to
``OUT`` (``tables/``, ``comparison.md``, ``ablation.md``, ``diagnostics.md``, ``fusion.md``, ``summary.md`` and
their JSON), and ``--write-docs FILE ...`` rewrites the generated blocks of those pages (``pages``);
``--check-docs FILE ...`` only says whether they are up to date (exit status 1 when not).

On a shared CPU, ``--threads 1`` (with ``OMP_NUM_THREADS=1``) avoids thread contention, which can slow small
tensor operations tenfold.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import pages, runner
from .arms import ARM_NAMES, DEFAULT_ARMS, get_arm
from .records import STORED_IGNORED, RunRecord, run_file, settings_differences
from .tables import aggregate, write_tables

__all__ = ["BASELINES", "DEFAULT_BASELINE_ORDER", "QUICK", "command_arguments", "main", "tables_from_folders"]

#: Detectors of the examples harness.
BASELINES: tuple[str, ...] = ("dinomaly", "rd4ad", "recontrast")
#: Default order of the runs: the two cheaper detectors first.
DEFAULT_BASELINE_ORDER: tuple[str, ...] = ("rd4ad", "dinomaly", "recontrast")
#: ``--quick``: a tiny synthetic data set and a few steps, for the test suite.
QUICK: dict[str, Any] = {
    "steps": 2, "image_size": 32, "batch_size": 4, "num_prototypes": 8, "width": 32, "log_every": 1,
    "category": "grid", "synthetic_image_size": 32, "num_train": 20, "num_test_good": 4, "defects_per_kind": 2,
}
#: Settings taken from the command line (``None``: the harness's default).
SETTING_KEYS: tuple[str, ...] = (
    "steps", "image_size", "batch_size", "lr", "num_prototypes", "lambdas", "preset", "prototype_init", "width",
    "encoder", "weights", "device", "log_every", "eval_stride", "feature_cache",
)
#: The command stated in the outputs.
PROGRAM: str = "python -m benchmarks.coldstart"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROGRAM, description=(__doc__ or "").split("\n\n")[0],
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--output", type=Path, default=None,
                   help="output folder (runs, tables, summary); optional with --tables-only")
    p.add_argument("--data-root", type=Path, default=None,
                   help="data set root in the MVTec AD layout (not needed with --tables-only; with --quick: "
                   "optional, synthetic data otherwise)")
    p.add_argument("--categories", nargs="+", default=None,
                   help="categories (default: all under --data-root; with --tables-only all stored)")
    p.add_argument("--baselines", nargs="+", default=None, choices=BASELINES,
                   help=f"detectors, run in this order (default: {' '.join(DEFAULT_BASELINE_ORDER)})")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="split seed = training seed (default: 0 1; with --tables-only all stored)")
    p.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=ARM_NAMES, metavar="ARM",
                   help="arms run on each split, in this order (default: %(default)s); one of: "
                   + ", ".join(ARM_NAMES) + " (benchmarks/coldstart/arms.py)")
    p.add_argument("--feature-cache", default=None, metavar="memory|off|disk:DIR",
                   help="the harness's frozen-encoder feature cache (default: memory; results are the same)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice); 1 avoids thread contention on a shared machine")
    p.add_argument("--tables-only", action="store_true",
                   help="train nothing: the tables of the stored runs (no data needed)")
    p.add_argument("--stored", nargs="+", type=Path, default=[], metavar="DIR",
                   help="read-only folders of runs (e.g. benchmarks/results/bench256): runs found there are reused")
    p.add_argument("--export", type=Path, default=None, metavar="DIR",
                   help="write every run of the tables to DIR/runs in compact form (metrics and settings only)")
    p.add_argument("--write-docs", nargs="+", type=Path, default=[], metavar="FILE",
                   help="rewrite the generated blocks of these pages from the runs of the tables")
    p.add_argument("--check-docs", nargs="+", type=Path, default=[], metavar="FILE",
                   help="exit with status 1 when a page's generated blocks are not what the runs give")
    p.add_argument("--resume-every", type=int, default=0, metavar="N",
                   help="write each run's training state every N steps, so that a run stopped in the middle "
                   "continues from there when the benchmark is started again (default: 0, none)")
    p.add_argument("--quick", action="store_true", help="tiny run for tests: synthetic data, a few steps, tiny images")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--num-prototypes", type=int, default=None, help="K")
    p.add_argument("--lambdas", nargs=3, type=float, default=None, metavar=("SPM", "DGC", "CLS"))
    p.add_argument("--preset", default="paper", choices=("paper", "official"),
                   help="ArcAD preset the arms change (default: paper)")
    p.add_argument("--prototype-init", default=None, choices=("offline", "online"),
                   help="prototype initialisation (default: the harness's, offline k-means)")
    p.add_argument("--width", type=int, default=None, help="model width (the harness's default for the encoder)")
    p.add_argument("--encoder", default=None)
    p.add_argument("--weights", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--setting", default=None, choices=("single", "multi"), help="(default: single)")
    p.add_argument("--log-every", type=int, default=None)
    p.add_argument("--eval-stride", type=int, default=None)
    return p


def command_arguments(argv: Sequence[str]) -> list[str]:
    """The arguments that shaped the runs: without --tables-only, --stored, --export, --write-docs and
    --check-docs (which only read, copy or render)."""
    dropped = ("--stored", "--export", "--write-docs", "--check-docs")
    kept: list[str] = []
    skipping = False
    for arg in argv:
        if arg in dropped:
            skipping = True
            continue
        if arg.startswith(tuple(f"{d}=" for d in dropped)) or arg == "--tables-only":
            skipping = False
            continue
        if skipping and not arg.startswith("--"):
            continue
        skipping = False
        kept.append(arg)
    return kept


def _given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line (with --quick's defaults for those not given)."""
    defaults = {k: QUICK[k] for k in ("steps", "image_size", "batch_size", "num_prototypes", "width", "log_every")} \
        if args.quick else {}
    settings: dict[str, Any] = {}
    if args.setting is not None:
        settings["setting"] = args.setting
    for key in SETTING_KEYS:
        value = getattr(args, key)
        if value is None:
            value = defaults.get(key)
        if value is not None:
            settings[key] = list(value) if isinstance(value, (list, tuple)) else value
    return settings


def _quick_data(output: Path) -> Path:
    from torch_arcad.datasets import make_synthetic_dataset

    return make_synthetic_dataset(
        output / "synthetic", categories=[QUICK["category"]], image_size=QUICK["synthetic_image_size"],
        num_train=QUICK["num_train"], num_test_good=QUICK["num_test_good"],
        num_defects_per_kind=QUICK["defects_per_kind"],
    )


def _folders(output: Path | None, stored: Sequence[Path]) -> list[Path]:
    return ([output] if output is not None and (output / "runs").is_dir() else []) + list(stored)


def _stored_keys(folders: Sequence[Path]) -> tuple[list[str], list[str], list[int]]:
    """The categories, detectors and seeds of the runs stored in ``folders`` (sorted)."""
    categories, detectors, seeds = set(), set(), set()
    for folder in folders:
        for path in sorted((Path(folder) / "runs").glob("*/*/*/seed*.json")):
            category, detector, _, name = path.relative_to(Path(folder) / "runs").parts
            categories.add(category)
            detectors.add(detector)
            seeds.add(int(name.removeprefix("seed").removesuffix(".json")))
    return sorted(categories), sorted(detectors), sorted(seeds)


def _check_one_setting(records: Sequence[RunRecord]) -> None:
    """The runs of one table must share one setting (the data folder and resume-only settings aside)."""
    first: dict[tuple[str, str], RunRecord] = {}
    for record in records:
        key = (record.category, record.baseline)
        if key not in first:
            first[key] = record
            continue
        differences = settings_differences(first[key].settings, record.settings, STORED_IGNORED)
        if differences:
            text = ", ".join(f"{k}: {a!r} against {b!r}" for k, (a, b) in differences.items())
            raise SystemExit(f"the runs of {key[0]}/{key[1]} were made with different settings ({text}): "
                             f"{record.arm} seed {record.seed} against {first[key].arm} seed {first[key].seed}")


def tables_from_folders(folders: Sequence[Path], settings: Mapping[str, Any] | None = None,
                        categories: Sequence[str] | None = None, baselines: Sequence[str] | None = None,
                        seeds: Sequence[int] | None = None) -> tuple[list[RunRecord], dict[str, dict[str, Any]]]:
    """The records stored in ``folders`` (the first folder holding a run wins) and their tables, without data.

    Args:
        folders: folders of runs (``DIR/runs/...``).
        settings: settings every run must have, compared key by key (``None`` or empty: no check beyond one
            setting per table).
        categories, baselines, seeds: what to read (default: everything stored).

    Raises:
        SystemExit: a run differs from ``settings``, or the runs of one table from each other.
    """
    stored_categories, stored_detectors, stored_seeds = _stored_keys(folders)
    if baselines is None:
        baselines = [b for b in DEFAULT_BASELINE_ORDER if b in stored_detectors]
        baselines += [b for b in stored_detectors if b not in baselines]
    records = runner.stored_runs(
        None, list(folders), None, categories or stored_categories, baselines,
        seeds if seeds is not None else stored_seeds,
    )
    for record in records:
        differences = {k: (record.settings.get(k), v) for k, v in (settings or {}).items()
                       if k not in STORED_IGNORED and record.settings.get(k) != v}
        if differences:
            text = ", ".join(f"{k}: stored {a!r}, now {b!r}" for k, (a, b) in differences.items())
            raise SystemExit(f"{record.category}/{record.baseline}/{record.arm} seed {record.seed} was made with "
                             f"other settings ({text})")
    _check_one_setting(records)
    return records, aggregate(records)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.resume_every < 0:
        raise SystemExit(f"--resume-every must be >= 0, got {args.resume_every}")
    if args.output is None and not args.tables_only:
        raise SystemExit("--output is required (it may be left out with --tables-only)")
    for name in args.arms:
        arm = get_arm(name)
        if not arm.trainable and not args.tables_only:
            raise SystemExit(f"arm {name!r} is record-only and cannot be trained: {arm.removed}")
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    # The tables depend on the runs only, so a --tables-only regeneration states the command that ran them.
    command = " ".join([PROGRAM, *command_arguments(list(sys.argv[1:] if argv is None else argv))])
    given = _given_settings(args)

    if args.tables_only:
        folders = _folders(args.output, args.stored)
        if not folders:
            raise SystemExit("--tables-only needs runs: --stored DIR, or an --output folder that holds runs")
        # Settings given on the command line must match the runs'; the runs of a table must share one setting.
        records, _ = tables_from_folders(folders, given, args.categories, args.baselines, args.seeds)
        if not records:
            raise SystemExit(f"no stored runs match in {', '.join(str(f) for f in folders)}")
        settings: dict[str, Any] = {**(dict(records[0].settings) if records else {}), **given}
        settings["seeds"] = sorted({r.seed for r in records})
        settings["arms"] = [a for a in ARM_NAMES if any(r.arm == a for r in records)]
    else:
        if args.data_root is None:
            if not args.quick:
                raise SystemExit("--data-root is required (or use --quick for a synthetic data set, or --tables-only)")
            data_root = _quick_data(args.output)
        else:
            data_root = args.data_root
            if not data_root.is_dir():
                raise SystemExit(f"--data-root {str(data_root)!r} is not a folder")
        if args.categories is None:
            from torch_arcad.datasets import list_categories

            categories = list_categories(data_root)
        else:
            categories = args.categories
        seeds = args.seeds if args.seeds is not None else [0, 1]
        settings = {"data_root": str(Path(data_root).resolve()), "setting": "single", **given}
        settings = runner.resolve_defaults(settings)
        run_settings = {**settings, "seeds": list(seeds), "arms": list(args.arms)}
        records = runner.run_benchmark(
            args.output, data_root=Path(data_root), categories=categories,
            baselines=args.baselines or list(DEFAULT_BASELINE_ORDER), seeds=seeds, settings=run_settings,
            arms=args.arms, stored=args.stored, resume_every=args.resume_every,
        )
        settings = run_settings

    if args.export is not None:
        for record in records:
            record.compact().save(run_file(args.export, record.category, record.baseline, record.arm,
                                                  record.seed))
        print(f"exported {len(records)} runs to {args.export / 'runs'}")
    tables = aggregate(records)
    if args.output is not None:
        summary = write_tables(args.output, records, settings, command, runner.machine_description())
        print(f"wrote {args.output / 'summary.md'} ({len(summary['tables'])} tables)")
    if args.write_docs:
        changed = pages.write_pages(args.write_docs, tables)
        for path in args.write_docs:
            print(f"{'updated' if path in changed else 'up to date'}: {path}")
    if args.check_docs:
        stale = pages.stale_pages(args.check_docs, tables)
        for path in stale:
            print(f"not up to date: {path} (regenerate with --write-docs)")
        if stale:
            return 1
    return 0
