"""Running the cold-start benchmark: splits, one run per category x detector x arm x seed, resuming, storing.

For every category, detector and seed ``s`` (split seed and training seed together), the cold-start split of
section 4.1 is made once with :func:`torch_arcad.coldstart.make_split` (``OUT/splits/seed<s>.json``) and every
arm asked for is trained on it with identical settings by the examples harness (``examples/arcad_harness``).
Runs go detector by detector (in the order given), then seed, then category, so a benchmark stopped early has
complete pairs for the first detectors. Each run is stored as a :class:`~benchmarks.coldstart.records.RunRecord`
in ``OUT/runs/<category>/<detector>/<arm>/seed<s>.json``; a run whose file exists (or that a ``--stored`` folder
holds) is not run again, and one written with other settings is an error, not reused. With ``resume_every``, a
run stopped in the middle continues from its last training snapshot (``OUT/snapshots/...``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .arms import ARMS, get_arm
from .records import RESUME_IGNORED, STORED_IGNORED, RunRecord, run_file
from .tables import BASELINE_KIND, METRIC_LABELS, METRICS

__all__ = [
    "PER_RUN_FIELDS",
    "SNAPSHOTS_DIR",
    "existing_run",
    "harness",
    "machine_description",
    "make_config",
    "resolve_defaults",
    "run_benchmark",
    "run_one",
    "snapshot_dir",
]

#: Harness fields set per run or without effect on the results; they are not part of the shared settings.
PER_RUN_FIELDS: tuple[str, ...] = (
    "baseline", "arcad", "categories", "seed", "split_seed", "split_path", "output_dir", "figures", "data_root",
    "verbose", "score", "synthetic", "arcad_options", "fusion_holdout", "resume_dir", "resume_every",
)
#: Folder of the runs' training snapshots under the output (``resume_every``).
SNAPSHOTS_DIR: str = "snapshots"


def harness() -> Any:
    """The examples harness (``arcad_harness``), installed with this distribution."""
    try:
        import arcad_harness
    except ImportError as error:  # pragma: no cover - depends on the installation
        raise ImportError(
            f"the cold-start benchmark needs the examples harness (arcad_harness, installed by pip install -e "
            f'".[examples]" from this checkout) and its optional dependencies: {error}'
        ) from error
    return arcad_harness


def machine_description() -> dict[str, Any]:
    """The machine the benchmark runs on: CPU model, cores, torch threads, versions, accelerator."""
    import torch

    import torch_arcad

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


def resolve_defaults(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Fill the settings left unset with the harness's defaults, so the output states every value used."""
    resolved = dict(settings)
    for f in dataclasses.fields(harness().ExperimentConfig):
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


def make_config(
    settings: Mapping[str, Any], *, baseline: str, arm: str, category: str, seed: int, split_path: Path
) -> Any:
    """The harness's ``ExperimentConfig`` for one run.

    Args:
        settings: the shared settings (``data_root``, ``steps``, ``batch_size``, ``image_size``, ``lr``,
            ``num_prototypes``, ``lambdas``, ``encoder``, ``weights``, ``device``, ``log_every``, ``eval_stride``,
            ``setting``); keys the harness's config does not know are ignored.
        baseline: the detector (a name of the harness).
        arm: the name of an arm of :data:`~benchmarks.coldstart.arms.ARMS` (its lambdas, ArcAD options and
            harness settings follow the arm); a record-only arm is refused.
        category: the category trained and evaluated.
        seed: split seed and training seed.
        split_path: the cold-start manifest of that seed.

    The harness writes no files of its own (``output_dir=None``): the benchmark stores each run itself.
    """
    entry = get_arm(arm)
    if not entry.trainable:
        raise ValueError(f"arm {arm!r} is record-only and cannot be trained: {entry.removed}")
    h = harness()
    known = {f.name for f in dataclasses.fields(h.ExperimentConfig)}
    values: dict[str, Any] = {k: v for k, v in settings.items() if k in known and v is not None}
    values.update(
        baseline=baseline,
        arcad=entry.arcad,
        categories=[category],
        seed=seed,
        split_seed=seed,
        split_path=str(split_path),
        output_dir=None,
        figures=False,
    )
    values["lambdas"] = entry.lambdas(values.get("lambdas", h.config.PAPER_LAMBDAS))
    if entry.arcad_options:
        values["arcad_options"] = dict(entry.arcad_options)
    values.update(entry.harness_options)
    return h.ExperimentConfig(**{k: v for k, v in values.items() if k in known})


def snapshot_dir(output: Path, category: str, baseline: str, arm: str, seed: int) -> Path:
    """Where a run's training snapshots go with ``resume_every``:
    ``output/snapshots/<category>/<detector>/<arm>/seed<seed>``."""
    return Path(output) / SNAPSHOTS_DIR / category / baseline / arm / f"seed{seed}"


def _remove_empty_folders(folder: Path, root: Path) -> None:
    """Remove ``folder`` and its parents below ``root`` while they are empty."""
    while folder != root and root in folder.parents and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


def run_one(
    settings: Mapping[str, Any], *, baseline: str, arm: str, category: str, seed: int, split_path: Path,
    snapshots: Path | None = None, resume_every: int = 0,
) -> RunRecord:
    """Train and evaluate one run; its full record (with the per-step history)."""
    import torch

    cfg = make_config(settings, baseline=baseline, arm=arm, category=category, seed=seed, split_path=split_path)
    if snapshots is not None and resume_every > 0:  # not a setting: it does not change the result
        cfg = dataclasses.replace(cfg, resume_dir=str(snapshots), resume_every=resume_every)
    start = time.perf_counter()
    result = harness().run_experiment(cfg)
    wall = time.perf_counter() - start
    return RunRecord(
        settings=dict(settings),
        category=category,
        baseline=baseline,
        arm=arm,
        seed=seed,
        split=str(split_path),
        scores=result["categories"][category],
        train_time_s=float(result.get("train_time_s", math.nan)),
        eval_time_s=float(result.get("eval_time_s", math.nan)),
        wall_time_s=wall,
        torch_threads=torch.get_num_threads(),
        diagnostics=result.get("diagnostics"),
        fusion=result.get("fusion"),
        harness_config=result.get("config"),
        harness_split=result.get("split"),
    )


def existing_run(
    output: Path | None, stored: Sequence[Path], settings: Mapping[str, Any] | None, category: str, baseline: str,
    arm: str, seed: int,
) -> tuple[RunRecord, Path] | None:
    """A run already made: this output's file first, then the first ``stored`` folder's; with where it was.

    Its settings must equal ``settings`` except :data:`~benchmarks.coldstart.records.RESUME_IGNORED` (this
    output) or :data:`~benchmarks.coldstart.records.STORED_IGNORED` (a stored folder); ``None`` skips the check.
    """
    places = ([(output, RESUME_IGNORED)] if output is not None else []) + [(f, STORED_IGNORED) for f in stored]
    for folder, ignored in places:
        path = run_file(folder, category, baseline, arm, seed)
        if path.is_file():
            record = RunRecord.load(path)
            if settings is not None:
                record.check_settings(settings, ignored, where=path)
            return record, path
    return None


def _make_splits(
    data_root: Path, categories: Sequence[str], seeds: Sequence[int], output: Path, log: Callable[[str], Any]
) -> dict[int, Path]:
    from torch_arcad.coldstart import load_split, make_split, save_split, split_summary

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


def run_benchmark(
    output: Path,
    *,
    data_root: Path,
    categories: Sequence[str],
    baselines: Sequence[str],
    seeds: Sequence[int],
    settings: Mapping[str, Any],
    log: Callable[[str], Any] = print,
    arms: Sequence[str] = ("baseline", "arcad"),
    stored: Sequence[Path] = (),
    resume_every: int = 0,
) -> list[RunRecord]:
    """Run (or resume) every category x detector x arm x seed; the records of the tables.

    Args:
        output: output folder (created).
        data_root: data set root in the MVTec AD layout.
        categories, baselines, seeds: what to run.
        settings: shared settings passed to every run (see :func:`make_config`).
        log: progress printer.
        arms: which arms to run, in this order for each category and seed (record-only arms are refused).
        stored: read-only folders of runs (``DIR/runs/...``, full or compact); a run found there is not run again.
        resume_every: with ``N > 0``, each run writes its training state every ``N`` steps under
            :func:`snapshot_dir` and a run stopped in the middle continues from it; 0 writes none.

    Returns:
        The runs asked for, then every other stored arm of these categories, detectors and seeds (arms run by an
        earlier call join the tables).
    """
    for name in arms:
        entry = get_arm(name)
        if not entry.trainable:
            raise ValueError(f"arm {name!r} is record-only and cannot be trained: {entry.removed}")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    splits = _make_splits(Path(data_root), categories, seeds, output, log)
    records: list[RunRecord] = []
    for baseline in baselines:
        for seed in seeds:
            for category in categories:
                for arm in arms:
                    path = run_file(output, category, baseline, arm, seed)
                    found = existing_run(output, stored, settings, category, baseline, arm, seed)
                    if found is not None:
                        record, where = found
                        log(f"[skip] {category} {baseline} {arm} seed {seed}: "
                            + (f"{where} exists" if where == path else f"stored in {where}"))
                    else:
                        log(f"[run ] {category} {baseline} {arm} seed {seed} ...")
                        snapshots = snapshot_dir(output, category, baseline, arm, seed)
                        record = run_one(
                            settings, baseline=baseline, arm=arm, category=category, seed=seed,
                            split_path=splits[seed], snapshots=snapshots, resume_every=resume_every,
                        )
                        _remove_empty_folders(snapshots, output / SNAPSHOTS_DIR)  # the harness removed the file
                        record.save(path)
                        log(
                            f"[done] {category} {baseline} {arm} seed {seed}: "
                            + " ".join(f"{METRIC_LABELS[m]} {record.percent(BASELINE_KIND, m):.1f}" for m in METRICS)
                            + f" ({record.wall_time_s:.0f} s)"
                        )
                    records.append(record)
    return records + stored_runs(output, stored, settings, categories, baselines, seeds, exclude=records)


def stored_runs(
    output: Path | None, stored: Sequence[Path], settings: Mapping[str, Any] | None, categories: Sequence[str],
    baselines: Sequence[str], seeds: Sequence[int], exclude: Sequence[RunRecord] = (),
) -> list[RunRecord]:
    """Every run of these categories, detectors and seeds found in ``output`` or the ``stored`` folders (any arm),
    except those in ``exclude``; settings checked as in :func:`existing_run`."""
    done = {r.key for r in exclude}
    records: list[RunRecord] = []
    for baseline in baselines:
        for seed in seeds:
            for category in categories:
                for arm in ARMS:
                    if (category, baseline, arm.name, seed) in done:
                        continue
                    found = existing_run(output, stored, settings, category, baseline, arm.name, seed)
                    if found is not None:
                        records.append(found[0])
    return records
