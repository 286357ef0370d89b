"""Cold-start benchmark: each baseline with and without ArcAD on the same cold-start splits, over several seeds.

Usage::

    python benchmarks/cold_start.py --data-root DIR --output OUT [--categories a b] \\
        [--baselines rd4ad dinomaly recontrast] [--seeds 0 1] [--steps N] [--image-size S] [--batch-size B] \\
        [--num-prototypes K] [--lambdas SPM DGC CLS] [--preset paper|official] [--threads T]
    python benchmarks/cold_start.py --quick --output OUT          # seconds, synthetic data
    python benchmarks/cold_start.py ... --tables-only             # rewrite the tables from the stored runs
    python benchmarks/cold_start.py ... --stored benchmarks/results/bench256 --tables-only   # the published tables

For every category, baseline and seed ``s`` (split seed and training seed together), the cold-start split of
section 4.1 is made once with :func:`torch_arcad.coldstart.make_split` (``OUT/splits/seed<s>.json``) and two
arms are trained on it with identical settings by the examples harness (``examples/arcad_harness``):

* ``baseline``: the plain detector (trained on the split's normal images only), scored by reconstruction;
* ``arcad``: the same detector plus ArcAD (trained on the whole split), scored by every score kind the
  harness reports (``recon``, ``prototype``, ``discriminator``, ``fused``).

Runs go baseline by baseline (in the order given), then seed, then category, so a benchmark stopped early has
complete pairs for the first baselines. Each run is stored as ``OUT/runs/<category>/<baseline>/<arm>/seed<s>.json``
(metrics, wall times, the harness's resolved configuration and diagnostics). A run whose file exists is skipped,
so an interrupted benchmark continues where it stopped when started again; a file written with different settings
is an error, not reused. ``--resume-every N`` also resumes a run stopped in the middle: every ``N`` steps its
training state is written to ``OUT/snapshots/<category>/<baseline>/<arm>/seed<s>/`` (see
``arcad_harness.snapshots``), the run started again continues from there with the result of an uninterrupted one,
and the snapshot is removed when the run is stored.

``--stored DIR`` adds read-only folders of runs in the same layout: a run found there is not run again and enters
the tables. ``--export DIR`` writes every run of the tables there in compact form (the per-step history replaced
by its summary, no local paths): metrics and settings only, small enough to keep in version control, so that runs
made on several machines add up to one table. ``benchmarks/results/`` holds the runs behind docs/results.md.

After the runs, the tables are written:

* ``OUT/tables/<category>_<baseline>.md`` / ``.json``: I-AUROC, P-AUROC, P-F1-max and AUPRO (percent, mean and
  sample standard deviation over seeds) of the baseline's reconstruction score and of every score kind of the
  +ArcAD arm, the gain of each over the baseline (both arms share each split, so the gain is taken per seed, then
  averaged), the number of seeds and the training and evaluation time of each arm;
* ``OUT/comparison.md``: the same tables as docs/results.md prints them (gains in brackets);
* ``OUT/ablation.md``: the paper's Table 4 layout, one line per arm (``recon`` score, gain, ArcAD's maps);
* ``OUT/diagnostics.md`` / ``.json``: one line per run: each loss term early and late in training (a baseline
  run has the reconstruction loss only, which shows whether its training has flattened and what ArcAD's terms
  cost the decoder's fit), and for the +ArcAD arms the share of anomalous patches, the discriminator's accuracy and
  the prototypes' usage (how many were used, the effective number, the largest share);
* ``OUT/summary.md`` / ``summary.json``: the command, the configuration (image size, steps, batch, K, lambdas, the
  values the harness chose automatically), the machine, all tables and the diagnostics.

On a shared CPU, ``--threads 1`` (with ``OMP_NUM_THREADS=1``) avoids thread contention, which can slow small
tensor operations tenfold.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

try:
    import torch_arcad
except ImportError:  # run as a script from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch_arcad

import torch

from torch_arcad.coldstart import load_split, make_split, save_split, split_summary

__all__ = [
    "ARMS",
    "BASELINES",
    "METRICS",
    "SCORE_KINDS",
    "ablation_markdown",
    "aggregate",
    "comparison_markdown",
    "compact_record",
    "diagnostics_summary",
    "fusion_summary",
    "machine_description",
    "main",
    "make_config",
    "markdown_table",
    "mean_std",
    "resolved_settings",
    "run_benchmark",
    "run_file",
    "write_tables",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The arms that can be compared on each split. ``baseline``: the plain detector; ``arcad``: with ArcAD (the
#: settings' lambdas); the ablation of the paper's Table 4 keeps lambda_1..3 of the settings for the terms it names
#: and sets the others to 0: ``spm`` (+L_spm), ``spm_dgc`` (+L_spm +L_dgc), ``cls`` (+L_cls alone); and ArcAD with
#: one named option: ``sigma_dim`` (the synthesis noise scaled to the paper's 768-dim bottleneck,
#: ``sigma_reference_dim=768``), ``focal_balanced`` (class-balanced focal loss: ``alpha=0.5``,
#: ``cls_weighting="classes"``), ``sigma_dim_balanced`` (both), ``cls_detached`` (L_cls trains the discriminator
#: only, ``detach_cls=True``), ``mask_quarter`` (a patch is a real anomaly when at least a quarter of its pixels
#: are defect pixels, ``mask_threshold=0.25``), ``mask_fraction`` (each real anomaly's term in L_dgc and L_cls
#: times its defect fraction, ``mask_weighting="fraction"``), ``mask_fraction_mean`` (the same weights in weighted
#: means, ``mask_weighting="fraction_mean"``), ``noise_range`` (pseudo-anomalies at noise scales drawn
#: log-uniformly from eq. 5's sigma to 8 sigma, ``sigma_max=0.12``), ``push_margin`` (eq. 8's push stops at cosine
#: 0.8 to the nearest prototype, ``push_margin=0.8``), ``disc_distance`` (the discriminator's logit also reads the
#: distance to the nearest prototype with a learned non-negative weight, ``discriminator_distance=True``); and ArcAD
#: with a harness setting: ``fusion_holdout`` (three defective training images withheld from training, the fused
#: score's weights fitted on them alone).
ARMS: tuple[str, ...] = (
    "baseline", "arcad", "spm", "spm_dgc", "cls", "sigma_dim", "focal_balanced", "sigma_dim_balanced", "cls_detached",
    "mask_quarter", "mask_fraction", "mask_fraction_mean", "noise_range", "push_margin", "fusion_holdout",
    "disc_distance",
)
#: Which of the lambdas (SPM, DGC, CLS) an arm keeps; ``None``: all of them.
ARM_TERMS: dict[str, tuple[bool, bool, bool] | None] = {
    "arcad": None,
    "spm": (True, False, False),
    "spm_dgc": (True, True, False),
    "cls": (False, False, True),
    "sigma_dim": None,
    "focal_balanced": None,
    "sigma_dim_balanced": None,
    "cls_detached": None,
    "mask_quarter": None,
    "mask_fraction": None,
    "mask_fraction_mean": None,
    "noise_range": None,
    "push_margin": None,
    "fusion_holdout": None,
    "disc_distance": None,
}
#: ArcAD keyword options of an arm (passed through the harness's ``arcad_options``).
ARM_OPTIONS: dict[str, dict[str, Any]] = {
    "sigma_dim": {"sigma_reference_dim": 768},
    "focal_balanced": {"alpha": 0.5, "cls_weighting": "classes"},
    "sigma_dim_balanced": {"sigma_reference_dim": 768, "alpha": 0.5, "cls_weighting": "classes"},
    "cls_detached": {"detach_cls": True},
    "mask_quarter": {"mask_threshold": 0.25},
    "mask_fraction": {"mask_weighting": "fraction"},
    "mask_fraction_mean": {"mask_weighting": "fraction_mean"},
    "noise_range": {"sigma_max": 0.12},
    "push_margin": {"push_margin": 0.8},
    "disc_distance": {"discriminator_distance": True},
}
#: Harness settings of an arm (fields of the harness's ``ExperimentConfig``). Three withheld defects keep one
#: image of each of tire's four defect kinds in training (its splits hold 7 defective images: 1 + 2 + 2 + 2).
ARM_HARNESS: dict[str, dict[str, Any]] = {
    "fusion_holdout": {"fusion_holdout": 3},
}
#: The arms run by default: the plain detector and the detector with ArcAD.
DEFAULT_ARMS: tuple[str, ...] = ("baseline", "arcad")
#: Arm names as printed in the tables.
ARM_LABELS: dict[str, str] = {
    "baseline": "baseline",
    "arcad": "+ArcAD",
    "spm": "+L_spm",
    "spm_dgc": "+L_spm +L_dgc",
    "cls": "+L_cls",
    "sigma_dim": "+ArcAD, sigma for D=768",
    "focal_balanced": "+ArcAD, balanced focal",
    "sigma_dim_balanced": "+ArcAD, sigma for D=768 + balanced focal",
    "cls_detached": "+ArcAD, L_cls detached",
    "mask_quarter": "+ArcAD, anomalous patch >= 25% defect",
    "mask_fraction": "+ArcAD, each patch's term times its defect fraction",
    "mask_fraction_mean": "+ArcAD, patches' defect fractions as weights of the means",
    "noise_range": "+ArcAD, pseudo-anomalies at noise scales sigma..8 sigma",
    "push_margin": "+ArcAD, push stops at cosine 0.8",
    "fusion_holdout": "+ArcAD, fused weights fitted on 3 withheld defects",
    "disc_distance": "+ArcAD, discriminator reads the prototype distance",
}
#: Baselines of the examples harness.
BASELINES: tuple[str, ...] = ("dinomaly", "rd4ad", "recontrast")
#: Default order of the runs: the two cheaper detectors first.
DEFAULT_BASELINE_ORDER: tuple[str, ...] = ("rd4ad", "dinomaly", "recontrast")
#: Score kinds of a +ArcAD run (a baseline run has ``recon`` only).
SCORE_KINDS: tuple[str, ...] = ("recon", "prototype", "discriminator", "fused", "fused_equal")
#: The baseline is always scored by reconstruction.
BASELINE_KIND: str = "recon"
#: Metrics in the order of the tables.
METRICS: tuple[str, ...] = ("i_auroc", "p_auroc", "p_f1_max", "aupro")
METRIC_LABELS: dict[str, str] = {"i_auroc": "I-AUROC", "p_auroc": "P-AUROC", "p_f1_max": "P-F1-max", "aupro": "AUPRO"}
#: Metrics come back as fractions; the tables print percent.
PERCENT: float = 100.0
#: Version of the per-run file format.
RUN_FORMAT_VERSION: int = 1
#: Harness fields set per run or without effect on the results; they are not part of the shared settings.
PER_RUN_FIELDS: tuple[str, ...] = (
    "baseline", "arcad", "categories", "seed", "split_seed", "split_path", "output_dir", "figures", "data_root",
    "verbose", "score", "synthetic", "arcad_options", "fusion_holdout", "resume_dir", "resume_every",
)
#: Folder of the runs' training snapshots under the output (``--resume-every``).
SNAPSHOTS_DIR: str = "snapshots"
#: Windows of the training history averaged for the "first" and "last" values of the diagnostics.
FIRST_WINDOW: float = 0.05
LAST_WINDOW: float = 0.1
#: Settings that may differ between a stored run and a resumed benchmark: they do not change a run's result.
RESUME_IGNORED: tuple[str, ...] = ("seeds", "log_every", "arms", "feature_cache")
#: Settings that may also differ between a run of a ``--stored`` folder and this benchmark: where the data set lies.
STORED_IGNORED: tuple[str, ...] = (*RESUME_IGNORED, "data_root")
#: A prototype is "in use" when it receives a positive share of the hard assignments.
USAGE_EPS: float = 0.0

#: ``--quick``: tiny synthetic data set and a few steps, for the test suite.
QUICK_STEPS: int = 2
QUICK_IMAGE_SIZE: int = 32
QUICK_BATCH_SIZE: int = 4
QUICK_NUM_PROTOTYPES: int = 8
QUICK_WIDTH: int = 32
QUICK_SYNTHETIC_CATEGORY: str = "grid"
QUICK_SYNTHETIC_IMAGE_SIZE: int = 32
QUICK_NUM_TRAIN: int = 20
QUICK_NUM_TEST_GOOD: int = 4
QUICK_DEFECTS_PER_KIND: int = 2


# ------------------------------------------------------------------------------------------ helpers


def _harness() -> Any:
    """Import the examples harness (``examples/arcad_harness``) from the source checkout."""
    examples = str(REPO_ROOT / "examples")
    if examples not in sys.path:
        sys.path.insert(0, examples)
    try:
        import arcad_harness
    except ImportError as error:  # pragma: no cover - depends on the checkout
        raise ImportError(
            f"the cold-start benchmark needs the examples harness at {examples}/arcad_harness and its optional "
            f'dependencies (pip install "torch-arcad[examples]"): {error}'
        ) from error
    return arcad_harness


def _write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False, default=_json_default) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value); ``nan`` for none or non-finite values.

    Args:
        values: floats.

    Returns:
        ``(mean, std)``.
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite or len(finite) != len(values):
        return math.nan, math.nan
    if len(finite) == 1:
        return finite[0], 0.0
    return statistics.fmean(finite), statistics.stdev(finite)


def _fmt(mean: float, std: float, digits: int = 1, signed: bool = False) -> str:
    if not math.isfinite(mean):
        return "n/a"
    sign = "+" if signed else ""
    return f"{mean:{sign}.{digits}f} ± {std:.{digits}f}"


def machine_description() -> dict[str, Any]:
    """The machine the benchmark ran on: CPU model, cores, torch threads, versions, accelerator."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_arcad": getattr(torch_arcad, "__version__", "unknown"),
        "platform": platform.platform(),
    }


# ------------------------------------------------------------------------------------------ runs


def run_file(output: Path, category: str, baseline: str, arm: str, seed: int) -> Path:
    """Where the result of one run is stored: ``output/runs/<category>/<baseline>/<arm>/seed<seed>.json``."""
    return output / "runs" / category / baseline / arm / f"seed{seed}.json"


def make_config(
    settings: Mapping[str, Any], *, baseline: str, arm: str, category: str, seed: int, split_path: Path
) -> Any:
    """The harness's ``ExperimentConfig`` for one run.

    Args:
        settings: the shared settings (``data_root``, ``steps``, ``batch_size``, ``image_size``, ``lr``,
            ``num_prototypes``, ``lambdas``, ``encoder``, ``weights``, ``device``, ``log_every``, ``eval_stride``,
            ``setting``); keys the harness's config does not know are ignored.
        baseline: one of :data:`BASELINES`.
        arm: one of :data:`ARMS` (its lambdas, ArcAD options and harness settings follow :data:`ARM_TERMS`,
            :data:`ARM_OPTIONS` and :data:`ARM_HARNESS`).
        category: the category trained and evaluated.
        seed: split seed and training seed.
        split_path: the cold-start manifest of that seed.

    The harness writes no files of its own (``output_dir=None``): the benchmark stores each run itself.
    """
    harness = _harness()
    known = {f.name for f in dataclasses.fields(harness.ExperimentConfig)}
    values: dict[str, Any] = {k: v for k, v in settings.items() if k in known and v is not None}
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    values.update(
        baseline=baseline,
        arcad=arm != "baseline",
        categories=[category],
        seed=seed,
        split_seed=seed,
        split_path=str(split_path),
        output_dir=None,
        figures=False,
    )
    lambdas = tuple(values.get("lambdas", harness.config.PAPER_LAMBDAS))
    keep = ARM_TERMS.get(arm)
    if keep is not None:
        lambdas = tuple(value if kept else 0.0 for value, kept in zip(lambdas, keep))
    values["lambdas"] = lambdas
    if arm in ARM_OPTIONS:
        values["arcad_options"] = dict(ARM_OPTIONS[arm])
    values.update(ARM_HARNESS.get(arm, {}))
    return harness.ExperimentConfig(**{k: v for k, v in values.items() if k in known})


def snapshot_dir(output: Path, category: str, baseline: str, arm: str, seed: int) -> Path:
    """Where a run's training snapshots go with ``--resume-every``: ``output/snapshots/<category>/<baseline>/<arm>/
    seed<seed>``."""
    return output / SNAPSHOTS_DIR / category / baseline / arm / f"seed{seed}"


def _remove_empty_folders(folder: Path, root: Path) -> None:
    """Remove ``folder`` and its parents below ``root`` while they are empty."""
    while folder != root and root in folder.parents and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


def _run_one(
    settings: Mapping[str, Any], *, baseline: str, arm: str, category: str, seed: int, split_path: Path,
    snapshots: Path | None = None, resume_every: int = 0,
) -> dict[str, Any]:
    harness = _harness()
    cfg = make_config(settings, baseline=baseline, arm=arm, category=category, seed=seed, split_path=split_path)
    if snapshots is not None and resume_every > 0:  # not a setting: it does not change the result
        cfg = dataclasses.replace(cfg, resume_dir=str(snapshots), resume_every=resume_every)
    start = time.perf_counter()
    result = harness.run_experiment(cfg)
    wall = time.perf_counter() - start
    scores = result["categories"][category]
    return {
        "format_version": RUN_FORMAT_VERSION,
        "settings": dict(settings),
        "category": category,
        "baseline": baseline,
        "arm": arm,
        "seed": seed,
        "split": str(split_path),
        "scores": scores,
        "train_time_s": float(result.get("train_time_s", math.nan)),
        "eval_time_s": float(result.get("eval_time_s", math.nan)),
        "wall_time_s": wall,
        "torch_threads": torch.get_num_threads(),
        "diagnostics": result.get("diagnostics"),
        "fusion": result.get("fusion"),
        "harness_config": result.get("config"),
        "harness_split": result.get("split"),
    }


def compact_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A run's record without its per-step history and local paths, for ``--export``.

    The history (one entry per training step) is replaced by :func:`diagnostics_summary` of it, which is all the
    tables use; the split, the data folder and the other local paths are named by their last component
    (``make_split`` with the seed makes the split again). Everything the
    tables read is kept, so tables written from compact records equal those written from the full ones.

    Args:
        record: a run as stored in ``OUT/runs`` (full or already compact).

    Returns:
        A new dict: the record with ``"diagnostics": None`` and ``"diagnostics_summary"`` set.
    """
    out = dict(record)
    if "diagnostics_summary" not in out:
        out["diagnostics_summary"] = diagnostics_summary(record.get("diagnostics"), record["category"])
    out["diagnostics"] = None
    out["split"] = Path(str(record.get("split", ""))).name
    # Local folders are named, not located (the data folder may lie anywhere; STORED_IGNORED skips it).
    if isinstance(record.get("settings"), Mapping) and "data_root" in record["settings"]:
        out["settings"] = {**record["settings"], "data_root": Path(str(record["settings"]["data_root"])).name}
    if isinstance(record.get("harness_config"), Mapping):
        config = dict(record["harness_config"])
        for key in ("data_root", "split_path", "output_dir", "resume_dir"):
            if config.get(key) is not None:
                config[key] = Path(str(config[key])).name
        out["harness_config"] = config
    return out


def _run_summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """The diagnostics summary of a run, full or compact."""
    if isinstance(record.get("diagnostics_summary"), Mapping):
        return dict(record["diagnostics_summary"])
    return diagnostics_summary(record.get("diagnostics"), record["category"])


def _load_existing(
    path: Path, settings: Mapping[str, Any], ignored: Sequence[str] = RESUME_IGNORED
) -> dict[str, Any]:
    record = json.loads(path.read_text(encoding="utf-8"))
    stored = record.get("settings", {})
    keys = sorted(k for k in set(stored) | set(settings) if k not in ignored and stored.get(k) != settings.get(k))
    if keys:
        differences = ", ".join(f"{k}: stored {stored.get(k)!r}, now {settings.get(k)!r}" for k in keys)
        raise ValueError(
            f"{path} was written with other settings ({differences}). Use another --output folder or remove the file."
        )
    return record


def _make_splits(
    data_root: Path, categories: Sequence[str], seeds: Sequence[int], output: Path, log: Any
) -> dict[int, Path]:
    paths: dict[int, Path] = {}
    for seed in seeds:
        path = output / "splits" / f"seed{seed}.json"
        if path.is_file():
            split = load_split(path)
            missing = [c for c in categories if c not in split["categories"]]
            if missing or Path(split["root"]) != data_root.resolve():
                raise ValueError(
                    f"{path} does not match this benchmark (root {split['root']!r}, categories "
                    f"{sorted(split['categories'])}); expected root {str(data_root.resolve())!r} and {list(categories)}"
                )
        else:
            split = make_split(data_root, categories=list(categories), seed=seed)
            save_split(split, path)
        for category in categories:
            log(f"split seed {seed}: {split_summary(split, category)}")
        paths[seed] = path
    return paths


# ------------------------------------------------------------------------------------------ tables


def _window_mean(values: Sequence[float], fraction: float, tail: bool) -> float:
    """Mean of the first (or last) ``fraction`` of ``values`` (at least one value)."""
    n = max(1, int(len(values) * fraction))
    return statistics.fmean(values[-n:] if tail else values[:n])


def diagnostics_summary(diagnostics: Any, category: str | None = None) -> dict[str, Any]:
    """Condense the harness's diagnostics of one run (a baseline run's history has its loss terms only).

    The harness records, per model (``diagnostics[category]`` in the single setting), a ``history`` of per-step
    dicts (``loss``, ``loss_recon``, ``loss_arcad``, ``loss_spm``, ``loss_dgc``, ``loss_cls``, ``initialized``,
    ``anomalous_fraction``, ``disc_acc_normal`` / ``_synthetic`` / ``_real``) and ``prototype_usage``: the number
    of normal patches nearest to each prototype, summed over all steps. Steps before the prototypes were
    initialised are left out. Single steps are noisy, so "first" is the mean of the first
    :data:`FIRST_WINDOW` of the steps and "last" the mean of the last :data:`LAST_WINDOW` (at least one step each).

    Args:
        diagnostics: the ``"diagnostics"`` entry of a harness result (or one model's entry).
        category: the model's name to pick from ``diagnostics``.

    Returns:
        ``{"terms": {term: {"first", "last"}}, "anomalous_fraction": {"first", "last", "mean"},
        "discriminator_accuracy": {kind: {"first", "last"}}, "prototypes_used", "num_prototypes", "max_share",
        "effective_prototypes"}`` (the effective number is ``exp`` of the usage's entropy: K for even use, 1 when
        one prototype takes everything); keys whose source is absent are left out.
    """
    if not isinstance(diagnostics, Mapping):
        return {}
    diag: Mapping[str, Any] = diagnostics
    if category is not None and isinstance(diag.get(category), Mapping):
        diag = diag[category]
    summary: dict[str, Any] = {}

    series: dict[str, list[float]] = {}
    history = diag.get("history")
    if isinstance(history, Sequence):
        for entry in history:
            if not isinstance(entry, Mapping) or entry.get("initialized") is False:
                continue
            for key, value in entry.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                    series.setdefault(key, []).append(float(value))

    def window(values: list[float]) -> dict[str, float]:
        return {"first": _window_mean(values, FIRST_WINDOW, False), "last": _window_mean(values, LAST_WINDOW, True)}

    terms = {k: window(v) for k, v in series.items() if k.startswith("loss")}
    if terms:
        summary["terms"] = terms
    if "anomalous_fraction" in series:
        values = series["anomalous_fraction"]
        summary["anomalous_fraction"] = {**window(values), "mean": statistics.fmean(values)}
    accuracy = {k.removeprefix("disc_acc_"): window(v) for k, v in series.items() if k.startswith("disc_acc")}
    if accuracy:
        summary["discriminator_accuracy"] = accuracy

    usage = diag.get("prototype_usage")
    if isinstance(usage, Sequence) and usage and all(isinstance(u, (int, float)) for u in usage):
        total = float(sum(usage))
        summary["num_prototypes"] = len(usage)
        summary["prototypes_used"] = sum(1 for u in usage if u > USAGE_EPS)
        summary["max_share"] = max(usage) / total if total > 0 else math.nan
        # Uniform use would give every prototype 1 / K; the effective number exp(entropy) says how many are in use.
        shares = [u / total for u in usage if u > 0] if total > 0 else []
        summary["effective_prototypes"] = math.exp(-sum(p * math.log(p) for p in shares)) if shares else math.nan
    return summary


def _percent(record: Mapping[str, Any], kind: str, metric: str) -> float:
    return PERCENT * float(record["scores"].get(kind, {}).get(metric, math.nan))


def _row(label: str, kind: str, runs: Sequence[Mapping[str, Any]], reference: Mapping[int, Mapping[str, Any]]) -> dict:
    """One table row: metrics of ``kind`` over ``runs``; gains against the baseline runs ``reference`` (by seed),
    over the seeds that have both."""
    row: dict[str, Any] = {"arm": label, "score": kind, "seeds": sorted(r["seed"] for r in runs), "metrics": {}}
    paired = [r for r in runs if r["seed"] in reference]
    for metric in METRICS:
        values = [_percent(r, kind, metric) for r in runs]
        mean, std = mean_std(values)
        entry: dict[str, Any] = {"mean": mean, "std": std, "values": values}
        if paired:
            ours = [_percent(r, kind, metric) for r in paired]
            theirs = [_percent(reference[r["seed"]], BASELINE_KIND, metric) for r in paired]
            entry["gain"] = mean_std(ours)[0] - mean_std(theirs)[0]
            entry["paired_gain_mean"], entry["paired_gain_std"] = mean_std([a - b for a, b in zip(ours, theirs)])
            entry["gain_seeds"] = [r["seed"] for r in paired]
        row["metrics"][metric] = entry
    for key in ("train_time_s", "eval_time_s", "wall_time_s"):
        row[key] = dict(zip(("mean", "std"), mean_std([float(r[key]) for r in runs])))
    return row


def aggregate(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Group per-run records into tables keyed ``"<category>/<baseline>"``.

    Each table has ``category``, ``baseline``, ``rows`` (the baseline's ``recon`` row first, then one row per
    score kind of each other arm present, in the order of :data:`ARMS`), ``train_overhead`` (mean +ArcAD training time over mean baseline training
    time) and ``num_seeds`` (seeds with both arms). Only seeds that have both arms enter the gains.
    """
    tables: dict[str, dict[str, Any]] = {}
    groups: dict[tuple[str, str], dict[str, dict[int, Mapping[str, Any]]]] = {}
    for record in records:
        key = (record["category"], record["baseline"])
        groups.setdefault(key, {arm: {} for arm in ARMS})[record["arm"]][int(record["seed"])] = record
    for (category, baseline), arms in sorted(groups.items()):
        base, cal = arms["baseline"], arms["arcad"]
        rows = []
        if base:
            rows.append(_row(ARM_LABELS["baseline"], BASELINE_KIND, [base[s] for s in sorted(base)], {}))
        for arm in ARMS[1:]:
            runs = arms[arm]
            if not runs:
                continue
            paired = {s: base[s] for s in runs if s in base}
            kinds = [k for k in SCORE_KINDS if any(k in r["scores"] for r in runs.values())]
            for kind in kinds:
                row = _row(ARM_LABELS[arm], kind, [runs[s] for s in sorted(runs)], paired)
                row["arm_name"] = arm
                rows.append(row)
        overhead = math.nan
        if base and cal:
            base_t, _ = mean_std([r["train_time_s"] for r in base.values()])
            cal_t, _ = mean_std([r["train_time_s"] for r in cal.values()])
            overhead = cal_t / base_t if base_t > 0 else math.nan
        tables[f"{category}/{baseline}"] = {
            "category": category,
            "baseline": baseline,
            "num_seeds": len(set(base) & set(cal)),
            "rows": rows,
            "train_overhead": overhead,
        }
    return tables


def markdown_table(table: Mapping[str, Any]) -> str:
    """A Markdown table of :func:`aggregate`'s output for one category and baseline (percent, mean ± std)."""
    header = ["arm", "score"] + [METRIC_LABELS[m] for m in METRICS] + [
        f"gain {METRIC_LABELS[m]}" for m in METRICS
    ] + ["seeds", "train s", "eval s"]
    lines = [
        f"### {table['category']} / {table['baseline']}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in table["rows"]:
        cells = [row["arm"], row["score"]]
        cells += [_fmt(row["metrics"][m]["mean"], row["metrics"][m]["std"]) for m in METRICS]
        for m in METRICS:
            entry = row["metrics"][m]
            cells.append(
                _fmt(entry["paired_gain_mean"], entry["paired_gain_std"], signed=True) if "gain" in entry else "-"
            )
        cells.append(str(len(row["seeds"])))
        cells += [_fmt(row[k]["mean"], row[k]["std"], digits=0) for k in ("train_time_s", "eval_time_s")]
        lines.append("| " + " | ".join(cells) + " |")
    overhead = table.get("train_overhead", math.nan)
    if math.isfinite(overhead):
        lines += ["", f"+ArcAD training time: {overhead:.2f}x the baseline's."]
    return "\n".join(lines) + "\n"


def _fmt_runs(mean: float, std: float, num_seeds: int, signed: bool = False) -> str:
    """``mean ± std`` over several seeds, the bare value for one."""
    if num_seeds == 1 and math.isfinite(mean):
        return f"{mean:{'+' if signed else ''}.1f}"
    return _fmt(mean, std, signed=signed)


def _metric_cells(row: Mapping[str, Any]) -> list[str]:
    """One cell per metric of a table row: ``mean ± std`` over its seeds, then the paired gain in brackets."""
    n = len(row["seeds"])
    cells = []
    for metric in METRICS:
        entry = row["metrics"][metric]
        cell = _fmt_runs(entry["mean"], entry["std"], n)
        if "gain" in entry:
            gains = len(entry["gain_seeds"])
            cell += f" ({_fmt_runs(entry['paired_gain_mean'], entry['paired_gain_std'], gains, signed=True)})"
        cells.append(cell)
    return cells


def comparison_markdown(table: Mapping[str, Any]) -> str:
    """One category and baseline as docs/results.md prints it: a line per arm and score kind, each metric as
    ``mean ± std`` over the seeds with the gain over the baseline's ``recon`` score in brackets (taken per seed on
    the shared split, then mean ± std); one seed prints the bare values.

    Args:
        table: one value of :func:`aggregate`'s output.
    """
    header = ["arm", "score", "seeds", *(METRIC_LABELS[m] for m in METRICS)]
    lines = [f"#### {table['category']} / {table['baseline']}", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    for row in table["rows"]:
        n = len(row["seeds"])
        cells = [row["arm"], row["score"], str(n)]
        cells += _metric_cells(row)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ablation_markdown(table: Mapping[str, Any]) -> str:
    """The paper's Table 4 layout for one category and baseline: one line per arm, its ``recon`` score with the
    gain over the baseline in brackets, and the pixel AUROC of ArcAD's own maps (``prototype``, ``discriminator``)
    where the arm has them (percent; mean ± std over the arm's seeds, the bare value for one seed).

    Args:
        table: one value of :func:`aggregate`'s output.
    """
    header = ["arm", "seeds", *(METRIC_LABELS[m] for m in METRICS), "prototype map P-AUROC",
              "discriminator map P-AUROC"]
    lines = [f"#### {table['category']} / {table['baseline']}", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    by_arm: dict[str, dict[str, Mapping[str, Any]]] = {}
    for row in table["rows"]:
        by_arm.setdefault(row["arm"], {})[row["score"]] = row
    for label, rows in by_arm.items():
        recon = rows.get(BASELINE_KIND)
        if recon is None:
            continue
        n = len(recon["seeds"])
        cells = [label, str(n)]
        cells += _metric_cells(recon)
        for kind in ("prototype", "discriminator"):
            own = rows.get(kind)
            if own is None:
                cells.append("-")
            else:
                entry = own["metrics"]["p_auroc"]
                cells.append(_fmt_runs(entry["mean"], entry["std"], len(own["seeds"])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


#: The maps the fused score weighs, in the order of its weights.
FUSED_KINDS: tuple[str, ...] = ("recon", "prototype", "discriminator")


def fusion_summary(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per +ArcAD-type run: the fused score's weights, each map's pixel AUROC on the defects the weights were
    fitted on (the training defects, in-sample: the model trained on them; or, with ``fusion_holdout``, defects
    withheld from training) and on the test split.

    Returns:
        ``[{"category", "baseline", "arm", "seed", "fitted_on": "training" | "withheld", "fit_images",
        "weights": {kind: w}, "train_p_auroc": {kind: x}, "test_p_auroc": {kind: x}}]`` (percent; ``nan`` where a
        run did not record it; ``fit_images`` is ``None`` in runs that predate the field).
    """
    rows = []
    for r in records:
        fusion = (r.get("fusion") or {}).get(r["category"])
        if r["arm"] == "baseline" or not isinstance(fusion, Mapping):
            continue
        by_kind = fusion.get("train_p_auroc_by_kind") or {}
        rows.append(
            {
                "category": r["category"],
                "baseline": r["baseline"],
                "arm": r["arm"],
                "seed": r["seed"],
                "fitted_on": "withheld" if fusion.get("held_out") else "training",
                "fit_images": fusion.get("fit_images"),
                "weights": {k: float(fusion["weights"].get(k, math.nan)) for k in FUSED_KINDS},
                "train_p_auroc": {k: PERCENT * float(by_kind.get(k, math.nan)) for k in FUSED_KINDS},
                "test_p_auroc": {k: _percent(r, k, "p_auroc") for k in FUSED_KINDS},
            }
        )
    return rows


def _fusion_lines(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "Fused-score weights (recon / prototype / discriminator), fitted on the training defects (in-sample: the "
        "model was trained on them) or on defects withheld from training, each map's pixel AUROC on the images of "
        "the fit and on the test split (percent).",
        "",
        "| category | baseline | arm | seed | fitted on | weights | fit P-AUROC r / p / d | test P-AUROC r / p / d |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        weights = " / ".join(f"{row['weights'][k]:.1f}" for k in FUSED_KINDS)
        train = " / ".join(f"{row['train_p_auroc'][k]:.1f}" for k in FUSED_KINDS)
        test = " / ".join(f"{row['test_p_auroc'][k]:.1f}" for k in FUSED_KINDS)
        fitted = row["fitted_on"] if row.get("fit_images") is None else f"{row['fitted_on']} ({row['fit_images']})"
        lines.append(f"| {row['category']} | {row['baseline']} | {row['arm']} | {row['seed']} | {fitted} | {weights} "
                     f"| {train} | {test} |")
    return "\n".join(lines) + "\n"


def _diagnostics_lines(entries: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        f"Terms and accuracies: mean over the first {FIRST_WINDOW:.0%} of steps → mean over the last "
        f"{LAST_WINDOW:.0%}. Accuracy of the "
        "discriminator on normal (n), synthetic (s) and real anomalous (r) patches. Prototypes: used at least once / "
        "K, effective number exp(entropy) of the usage over all steps, largest share. Baseline runs have no ArcAD "
        "terms (n/a).",
        "",
        "| category | baseline | arm | seed | spm | dgc | cls | recon | anomalous patches | disc. accuracy n / s / r "
        "| prototypes used | effective | max share |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        s = e["summary"]
        terms = s.get("terms", {})
        cells = [e["category"], e["baseline"], e["arm"], str(e["seed"])]
        for key in ("loss_spm", "loss_dgc", "loss_cls", "loss_recon"):
            t = terms.get(key)
            cells.append(f"{t['first']:.3g} → {t['last']:.3g}" if t else "n/a")
        frac = s.get("anomalous_fraction")
        cells.append(f"{100 * frac['mean']:.2f}%" if frac else "n/a")
        acc = s.get("discriminator_accuracy", {})
        cells.append(
            " / ".join(
                f"{acc[k]['first']:.2f} → {acc[k]['last']:.2f}" if k in acc else "n/a"
                for k in ("normal", "synthetic", "real")
            )
            if acc
            else "n/a"  # a baseline run: no discriminator
        )
        cells.append(f"{s['prototypes_used']} / {s['num_prototypes']}" if "prototypes_used" in s else "n/a")
        cells.append(f"{s['effective_prototypes']:.0f}" if "effective_prototypes" in s else "n/a")
        cells.append(f"{s['max_share']:.3f}" if "max_share" in s else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def resolved_settings(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """What the harness chose per baseline for the settings left automatic: K, eval stride, patch grid and
    patches per step (from the +ArcAD runs' resolved configuration and diagnostics)."""
    resolved: dict[str, dict[str, Any]] = {}
    for r in records:
        if r["arm"] != "arcad" or r["baseline"] in resolved:
            continue
        config = r.get("harness_config") or {}
        diag = (r.get("diagnostics") or {}).get(r["category"], {})
        resolved[r["baseline"]] = {
            "num_prototypes": config.get("num_prototypes"),
            "eval_stride": config.get("eval_stride"),
            "patch_grid": diag.get("patch_grid"),
            "patches_per_step": diag.get("patches_per_step"),
        }
    return resolved


def _config_lines(settings: Mapping[str, Any], machine: Mapping[str, Any], command: str) -> str:
    keys = ("steps", "batch_size", "image_size", "lr", "weight_decay", "num_prototypes", "lambdas", "preset",
            "prototype_init", "encoder", "weights", "width", "setting", "eval_stride", "device")
    lines = ["## Configuration", "", f"Command: `{command}`", ""]
    lines += [f"- {k}: {settings.get(k)}" for k in keys if k in settings]
    lines += [f"- seeds (split seed = training seed): {settings.get('seeds')}"]
    lines += [f"- machine: {machine['cpu']}, {machine['cpu_count']} cores, {machine['torch_threads']} torch threads, "
              f"accelerator {machine['cuda'] or 'none'}; Python {machine['python']}, torch {machine['torch']}"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ driver


def run_benchmark(
    output: Path,
    *,
    data_root: Path,
    categories: Sequence[str],
    baselines: Sequence[str],
    seeds: Sequence[int],
    settings: Mapping[str, Any],
    command: str = "",
    log: Any = print,
    tables_only: bool = False,
    arms: Sequence[str] = DEFAULT_ARMS,
    stored: Sequence[Path] = (),
    export: Path | None = None,
    resume_every: int = 0,
) -> dict[str, Any]:
    """Run (or resume) every category x baseline x arm x seed and write the tables.

    Args:
        output: output folder (created).
        data_root: data set root in the MVTec AD layout.
        categories, baselines, seeds: what to run.
        settings: shared settings passed to every run (see :func:`make_config`).
        command: the command line, stated in the output.
        log: progress printer.
        tables_only: run nothing; write the tables of the runs already stored.
        arms: which of :data:`ARMS` to run, in this order for each category and seed.
        stored: read-only folders of runs (``DIR/runs/...``, full or compact); a run found there is not run again.
            Their settings must equal these, except :data:`STORED_IGNORED`.
        export: when given, every run of the tables is written there in compact form (:func:`compact_record`).
        resume_every: with ``N > 0``, each run writes its training state every ``N`` steps under
            :func:`snapshot_dir` and a run stopped in the middle continues from it; 0 writes none.

    Returns:
        The summary (also written to ``output/summary.json``): ``config``, ``machine``, ``tables``,
        ``diagnostics``, ``total_wall_time_s`` (sum over the runs, resumed ones included).
    """
    arms = list(arms)
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ValueError(f"unknown arms {unknown}; known: {ARMS}")
    output.mkdir(parents=True, exist_ok=True)
    settings = {**settings, "seeds": list(seeds), "arms": arms}
    splits = _make_splits(data_root, categories, seeds, output, log)
    records: list[dict[str, Any]] = []
    # Baselines outermost (in the order given), so that a run stopped early has complete tables for the first ones.
    for baseline in baselines:
        for seed in seeds:
            for category in categories:
                for arm in arms:
                    path = run_file(output, category, baseline, arm, seed)
                    existing = _existing_run(output, stored, settings, category, baseline, arm, seed)
                    if existing is not None:
                        record, where = existing
                        log(f"[skip] {category} {baseline} {arm} seed {seed}: "
                            + (f"{where} exists" if where == path else f"stored in {where}"))
                    elif tables_only:
                        continue
                    else:
                        log(f"[run ] {category} {baseline} {arm} seed {seed} ...")
                        snapshots = snapshot_dir(output, category, baseline, arm, seed)
                        record = _run_one(
                            settings, baseline=baseline, arm=arm, category=category, seed=seed,
                            split_path=splits[seed], snapshots=snapshots, resume_every=resume_every,
                        )
                        _remove_empty_folders(snapshots, output / SNAPSHOTS_DIR)  # the harness removed the file
                        _write_json(path, record)
                        recon = record["scores"].get(BASELINE_KIND, {})
                        log(
                            f"[done] {category} {baseline} {arm} seed {seed}: "
                            + " ".join(f"{METRIC_LABELS[m]} {PERCENT * recon.get(m, math.nan):.1f}" for m in METRICS)
                            + f" ({record['wall_time_s']:.0f} s)"
                        )
                    records.append(record)
    # The tables hold every stored arm of these categories, baselines and seeds, also those of earlier calls with
    # other --arms (e.g. the ablation run after the main comparison), so every arm is paired with its baseline.
    done = {(r["category"], r["baseline"], r["arm"], int(r["seed"])) for r in records}
    for baseline in baselines:
        for seed in seeds:
            for category in categories:
                for arm in ARMS:
                    if (category, baseline, arm, seed) in done:
                        continue
                    existing = _existing_run(output, stored, settings, category, baseline, arm, seed)
                    if existing is not None:
                        records.append(existing[0])
    if export is not None:
        for record in records:
            _write_json(
                run_file(export, record["category"], record["baseline"], record["arm"], int(record["seed"])),
                compact_record(record),
            )
        log(f"exported {len(records)} runs to {export / 'runs'}")
    return write_tables(output, records, settings, command)


def _existing_run(
    output: Path, stored: Sequence[Path], settings: Mapping[str, Any], category: str, baseline: str, arm: str,
    seed: int,
) -> tuple[dict[str, Any], Path] | None:
    """A run already made: this output's file first, then the first ``--stored`` folder's; with where it was."""
    path = run_file(output, category, baseline, arm, seed)
    if path.is_file():
        return _load_existing(path, settings), path
    for folder in stored:
        path = run_file(folder, category, baseline, arm, seed)
        if path.is_file():
            return _load_existing(path, settings, STORED_IGNORED), path
    return None


def write_tables(
    output: Path, records: Sequence[Mapping[str, Any]], settings: Mapping[str, Any], command: str
) -> dict[str, Any]:
    """Write the per-table, diagnostics and summary files for ``records`` (see the module docstring)."""
    machine = machine_description()
    threads = sorted({r["torch_threads"] for r in records if r.get("torch_threads")})
    if threads:  # what the runs used, which a --tables-only call need not share
        machine["torch_threads"] = threads[0] if len(threads) == 1 else threads
    tables = aggregate(records)
    for table in tables.values():
        stem = f"{table['category']}_{table['baseline']}"
        _write_json(output / "tables" / f"{stem}.json", {"config": dict(settings), "machine": machine, **table})
        _write_text(output / "tables" / f"{stem}.md", markdown_table(table))
    diagnostics = [
        {
            "category": r["category"],
            "baseline": r["baseline"],
            "arm": r["arm"],
            "seed": r["seed"],
            "summary": _run_summary(r),
        }
        for r in records
    ]
    _write_text(
        output / "comparison.md",
        "# Baseline against every arm, every score kind (percent)\n\n"
        + "\n".join(comparison_markdown(t) for t in tables.values()),
    )
    _write_text(
        output / "ablation.md",
        "# Every arm against its baseline (recon score; ArcAD's own maps' P-AUROC)\n\n"
        + "\n".join(ablation_markdown(t) for t in tables.values()),
    )
    _write_json(output / "diagnostics.json", diagnostics)
    _write_text(output / "diagnostics.md", "# Training diagnostics\n\n" + _diagnostics_lines(diagnostics))
    fusion = fusion_summary(records)
    _write_json(output / "fusion.json", fusion)
    _write_text(output / "fusion.md", "# Fused score: weights and in-sample bias\n\n" + _fusion_lines(fusion))
    resolved = resolved_settings(records)
    summary = {
        "config": dict(settings),
        "resolved": resolved,
        "command": command,
        "machine": machine,
        "tables": tables,
        "diagnostics": diagnostics,
        "total_wall_time_s": sum(float(r["wall_time_s"]) for r in records),
    }
    _write_json(output / "summary.json", summary)
    text = ["# Cold-start benchmark", "", _config_lines(settings, machine, command)]
    for baseline, values in resolved.items():
        text.append(f"- {baseline}: " + ", ".join(f"{k} {v}" for k, v in values.items()))
    text += ["", "## Results (percent)", ""]
    text += ["Gains are +ArcAD minus the baseline's reconstruction score, per seed on the same split, "
             "then mean ± std over seeds.", ""]
    text += [markdown_table(t) for t in tables.values()]
    text += [f"Total wall time of the runs: {summary['total_wall_time_s'] / 60:.1f} min.", ""]
    text += ["## Training diagnostics", "", _diagnostics_lines(diagnostics)]
    text += ["## Fused score", "", _fusion_lines(fusion)]
    _write_text(output / "summary.md", "\n".join(text))
    return summary


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--output", required=True, type=Path, help="output folder (runs, tables, summary)")
    p.add_argument("--data-root", type=Path, default=None,
                   help="data set root in the MVTec AD layout (with --quick: optional, synthetic data otherwise)")
    p.add_argument("--categories", nargs="+", default=None, help="categories (default: all under --data-root)")
    p.add_argument("--baselines", nargs="+", default=list(DEFAULT_BASELINE_ORDER), choices=BASELINES,
                   help="detectors, run in this order (default: %(default)s)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="split seed = training seed (default: 0 1)")
    p.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=ARMS,
                   help="arms run on each split, in this order (default: %(default)s); see ARMS in the source")
    p.add_argument("--feature-cache", default=None, metavar="memory|off|disk:DIR",
                   help="the harness's frozen-encoder feature cache (default: memory; results are the same)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice); 1 avoids thread contention on a shared machine")
    p.add_argument("--tables-only", action="store_true", help="run nothing: write the tables of the stored runs")
    p.add_argument("--stored", nargs="+", type=Path, default=[], metavar="DIR",
                   help="read-only folders of runs (e.g. benchmarks/results/bench256): runs found there are reused")
    p.add_argument("--export", type=Path, default=None, metavar="DIR",
                   help="write every run of the tables to DIR/runs in compact form (metrics and settings only)")
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
    p.add_argument("--preset", default=None, choices=("paper", "official"), help="ArcAD preset (default: paper)")
    p.add_argument("--prototype-init", default=None, choices=("offline", "online"),
                   help="prototype initialisation (default: the harness's, offline k-means)")
    p.add_argument("--width", type=int, default=None, help="model width (the harness's default for the encoder)")
    p.add_argument("--encoder", default=None)
    p.add_argument("--weights", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--setting", default="single", choices=("single", "multi"))
    p.add_argument("--log-every", type=int, default=None)
    p.add_argument("--eval-stride", type=int, default=None)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.resume_every < 0:
        raise SystemExit(f"--resume-every must be >= 0, got {args.resume_every}")
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    # The tables depend on the runs only, so a --tables-only regeneration states the command that ran them.
    given = _command_arguments(list(sys.argv[1:] if argv is None else argv))
    command = "python benchmarks/cold_start.py " + " ".join(given)
    if args.quick:
        defaults = {"steps": QUICK_STEPS, "image_size": QUICK_IMAGE_SIZE, "batch_size": QUICK_BATCH_SIZE,
                    "num_prototypes": QUICK_NUM_PROTOTYPES, "width": QUICK_WIDTH, "log_every": 1}
    else:
        defaults = {}
    if args.data_root is None:
        if not args.quick:
            raise SystemExit("--data-root is required (or use --quick for a synthetic data set)")
        from torch_arcad.datasets import make_synthetic_dataset

        data_root = make_synthetic_dataset(
            args.output / "synthetic",
            categories=[QUICK_SYNTHETIC_CATEGORY],
            image_size=QUICK_SYNTHETIC_IMAGE_SIZE,
            num_train=QUICK_NUM_TRAIN,
            num_test_good=QUICK_NUM_TEST_GOOD,
            num_defects_per_kind=QUICK_DEFECTS_PER_KIND,
        )
    else:
        data_root = args.data_root
        if not data_root.is_dir():
            raise SystemExit(f"--data-root {str(data_root)!r} is not a folder")
    if args.categories is None:
        from torch_arcad.datasets import list_categories

        categories = list_categories(data_root)
    else:
        categories = args.categories
    settings: dict[str, Any] = {"data_root": str(Path(data_root).resolve()), "setting": args.setting}
    for key in ("steps", "image_size", "batch_size", "lr", "num_prototypes", "lambdas", "preset", "prototype_init",
                "width", "encoder", "weights", "device", "log_every", "eval_stride", "feature_cache"):
        value = getattr(args, key)
        if value is None:
            value = defaults.get(key)
        if value is not None:
            settings[key] = list(value) if isinstance(value, (list, tuple)) else value
    settings = _resolve_defaults(settings)
    summary = run_benchmark(
        args.output, data_root=Path(data_root), categories=categories, baselines=args.baselines, seeds=args.seeds,
        settings=settings, command=command, tables_only=args.tables_only, arms=args.arms, stored=args.stored,
        export=args.export, resume_every=args.resume_every,
    )
    print(f"wrote {args.output / 'summary.md'} ({len(summary['tables'])} tables)")
    return 0


def _command_arguments(argv: list[str]) -> list[str]:
    """The arguments that shaped the runs: without --tables-only, --stored and --export (which only read or copy)."""
    kept: list[str] = []
    skipping = False
    for arg in argv:
        if arg in ("--stored", "--export"):
            skipping = True
            continue
        if arg.startswith(("--stored=", "--export=")) or arg == "--tables-only":
            skipping = False
            continue
        if skipping and not arg.startswith("--"):
            continue
        skipping = False
        kept.append(arg)
    return kept


def _resolve_defaults(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Fill the settings left unset with the harness's defaults, so the output states every value used."""
    harness = _harness()
    resolved = dict(settings)
    for f in dataclasses.fields(harness.ExperimentConfig):
        if f.name in resolved or f.name in PER_RUN_FIELDS:
            continue
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            value = f.default_factory()  # type: ignore[misc]
        else:
            continue
        resolved[f.name] = list(value) if isinstance(value, tuple) else value
    return resolved


if __name__ == "__main__":
    sys.exit(main())
