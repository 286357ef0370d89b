"""One experiment end to end (data, training, evaluation, files): :func:`run_experiment`, and both arms on the same
split: :func:`run_comparison`."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import ExperimentConfig, resolve_config
from .data import category_test_samples, hold_out_defects, load_images, prepare_data, split_counts, train_samples
from .detectors.registry import get_detector
from .evaluation import Fusion, evaluate_category, fit_fusion
from .report import comparison_table, mean_metrics, results_markdown, results_table, write_json, write_text
from .snapshots import remove_snapshot, snapshot_path
from .training import format_duration, train_model

__all__ = ["run_comparison", "run_experiment"]

MULTI_MODEL: str = "multi"
RESULTS_JSON: str = "results.json"
RESULTS_MD: str = "results.md"
FIGURES_DIR: str = "figures"


def _logger(cfg: ExperimentConfig) -> Callable[[str], None]:
    def log(message: str) -> None:
        if cfg.verbose:
            print(message, flush=True)

    return log


def run_experiment(cfg: ExperimentConfig) -> dict[str, Any]:
    """Train and evaluate one arm (the baseline alone, or with ArcAD) on a cold-start split.

    Args:
        cfg: the configuration (validated here; ``None`` fields are resolved, see
            :func:`arcad_harness.config.resolve_config`).

    Returns:
        ``{"config": resolved config dict (with the K used), "arm": "arcad" | "baseline", "headline": score kind,
        "score_kinds": [...], "categories": {category: {kind: {"i_auroc", "p_auroc", "p_f1_max", "aupro"}}},
        "mean": {kind: {...}}, "fusion": {model: weights and statistics} (ArcAD only), "train_time_s",
        "eval_time_s", "load_time_s", "diagnostics": {model: {"history": [...], "prototype_usage": [...], "test_recon_error": {category: {"normal", "defect"}}, ...}},
        "split": {category: {"train_normal", "train_defective", "test", "test_normal", "test_defective"}},
        "data_root", "files": {name: path}}``. Metrics are fractions in [0, 1]. A model is named after its
        category in the single setting and ``"multi"`` in the multi setting.

    Raises:
        ValueError, TypeError, FileNotFoundError, ImportError: bad configuration or data (clear messages; see
            :func:`arcad_harness.data.prepare_data`), and ``arcad_harness.backbones.CheckpointError`` (a
            ``ValueError``) for a checkpoint that does not fit the encoder.
    """
    cfg.validate()
    log = _logger(cfg)
    data = prepare_data(cfg)
    cfg = resolve_config(cfg, synthetic=data.synthetic)
    detector = get_detector(cfg.baseline)
    groups = [[c] for c in data.categories] if cfg.setting == "single" else [list(data.categories)]
    arm = "arcad" if cfg.arcad else "baseline"
    log(
        f"{cfg.baseline} {'+ArcAD' if cfg.arcad else '(baseline, normal images only)'}: {cfg.setting} setting, "
        f"categories {', '.join(data.categories)} from {data.root}"
        + (" (generated synthetic data)" if data.synthetic else "")
    )
    output = Path(cfg.output_dir).expanduser() if cfg.output_dir is not None else None
    want_figures = output is not None and cfg.figures
    categories: dict[str, Any] = {}
    diagnostics: dict[str, Any] = {}
    fusions: dict[str, Fusion] = {}
    files: dict[str, str] = {}
    overlays: dict[str, list[dict[str, Any]]] = {}
    train_time = eval_time = load_time = 0.0
    prototypes_used_k = None
    snapshots: list[Path | None] = []  # removed once the results are computed
    for group in groups:
        name = group[0] if cfg.setting == "single" else MULTI_MODEL
        start = time.perf_counter()
        samples = train_samples(data, group, with_defects=cfg.arcad)
        samples, withheld = hold_out_defects(samples, cfg.fusion_holdout, cfg.seed)
        train_set = load_images(samples, cfg.image_size)  # type: ignore[arg-type]
        held_out = load_images(withheld, cfg.image_size) if withheld else None  # type: ignore[arg-type]
        load_time += time.perf_counter() - start
        if withheld:
            log(f"[{cfg.baseline}+arcad {name}] {len(withheld)} defective training image(s) withheld from training "
                "to fit the fused score's weights")
        trained = train_model(detector, cfg, train_set, name, group, log)
        train_time += trained.train_time_s
        diagnostics[name] = trained.diagnostics
        if trained.setup.arcad is not None:
            prototypes_used_k = trained.setup.arcad.prototypes.num_prototypes
        start = time.perf_counter()
        fusion = fit_fusion(trained, train_set, cfg, held_out) if trained.setup.arcad is not None else None
        if fusion is not None:
            fusions[name] = fusion
        for category in group:
            samples = category_test_samples(data, category)
            result = evaluate_category(trained, fusion, category, samples, cfg, want_figures)
            categories[category] = result.metrics
            overlays[category] = result.examples
            diagnostics[name].setdefault("test_recon_error", {})[category] = result.recon_error
            headline = result.metrics[cfg.score]
            log(
                f"[{cfg.baseline}{'+arcad' if cfg.arcad else ''} {category}] {cfg.score}: "
                + ", ".join(f"{k} {100 * v:.1f}" for k, v in headline.items())
            )
        eval_time += time.perf_counter() - start
        del trained, train_set, held_out
        snapshots.append(snapshot_path(cfg, name))

    score_kinds = list(next(iter(categories.values())))
    resolved = cfg.to_dict()
    resolved["num_prototypes"] = prototypes_used_k
    result: dict[str, Any] = {
        "config": resolved,
        "arm": arm,
        "headline": cfg.score,
        "score_kinds": score_kinds,
        "categories": categories,
        "mean": mean_metrics(categories),
        "fusion": {name: f.to_dict() for name, f in fusions.items()},
        "train_time_s": train_time,
        "eval_time_s": eval_time,
        "load_time_s": load_time,
        "diagnostics": diagnostics,
        "split": split_counts(data),
        "data_root": str(data.root),
        "files": files,
    }
    log("")
    log(f"{cfg.baseline} {'+ArcAD' if cfg.arcad else 'baseline'}, score {cfg.score} (percent):")
    log(results_table(result, cfg.score))
    log(f"training {format_duration(train_time)}, evaluation {format_duration(eval_time)}")
    if output is not None:
        if want_figures:
            files.update(_write_figures(output, cfg, result, overlays))
        files["json"] = str(output / RESULTS_JSON)
        files["markdown"] = str(output / RESULTS_MD)
        write_json(output / RESULTS_JSON, result)
        write_text(output / RESULTS_MD, results_markdown(result))
        figures = f" and {output / FIGURES_DIR}" if want_figures else ""
        log(f"wrote {output / RESULTS_JSON}, {output / RESULTS_MD}{figures}")
    for path in snapshots:
        remove_snapshot(path)
    return result


def _write_figures(
    output: Path, cfg: ExperimentConfig, result: dict[str, Any], overlays: dict[str, list[dict[str, Any]]]
) -> dict[str, str]:
    from .figures import plot_loss_curves, plot_overlays, plot_prototype_usage

    folder = output / FIGURES_DIR
    arm = "+ArcAD" if cfg.arcad else "baseline"
    files = {}
    for category, examples in overlays.items():
        if examples:
            path = plot_overlays(
                examples, result["score_kinds"], folder / f"overlay_{category}.png", f"{cfg.baseline} {arm}: {category}"
            )
            files[f"overlay_{category}"] = str(path)
    for name, diag in result["diagnostics"].items():
        path = plot_loss_curves(diag["history"], folder / f"losses_{name}.png", f"{cfg.baseline} {arm}: {name}")
        files[f"losses_{name}"] = str(path)
        if "prototype_usage" in diag:
            path = plot_prototype_usage(
                diag["prototype_usage"], folder / f"prototype_usage_{name}.png", f"{cfg.baseline} {arm}: {name}"
            )
            files[f"prototype_usage_{name}"] = str(path)
    return files


def run_comparison(cfg: ExperimentConfig) -> dict[str, Any]:
    """Both arms on the same split: the plain baseline (normal images only, ``recon`` score) and +ArcAD.

    Files: ``<output_dir>/baseline/`` and ``<output_dir>/arcad/`` (each as :func:`run_experiment` writes them),
    plus ``<output_dir>/results.json`` (``{"baseline": ..., "arcad": ...}``) and ``<output_dir>/results.md`` with
    the side-by-side table of the headline score.

    Returns:
        ``{"baseline": result, "arcad": result, "files": {...}}``.
    """
    cfg.validate()
    output = Path(cfg.output_dir).expanduser() if cfg.output_dir is not None else None
    sub = (lambda arm: str(output / arm)) if output is not None else (lambda arm: None)
    baseline = run_experiment(
        dataclasses.replace(cfg, arcad=False, score="recon", fusion_holdout=0, output_dir=sub("baseline"))
    )
    arcad = run_experiment(dataclasses.replace(cfg, arcad=True, output_dir=sub("arcad")))
    table = comparison_table(baseline, arcad, cfg.score)
    if cfg.verbose:
        print(f"\n{cfg.baseline}: baseline (recon) vs +ArcAD ({cfg.score}), percent, (+ArcAD - baseline):", flush=True)
        print(table, flush=True)
        print(
            f"training {format_duration(baseline['train_time_s'])} (baseline), "
            f"{format_duration(arcad['train_time_s'])} (+ArcAD)",
            flush=True,
        )
    combined: dict[str, Any] = {"baseline": baseline, "arcad": arcad, "files": {}}
    if output is not None:
        lines = [
            f"# {cfg.baseline}: baseline vs +ArcAD",
            "",
            f"Same cold-start split; baseline trained on the training normals, +ArcAD on the whole training set. "
            f"Baseline score: recon; +ArcAD score: {cfg.score}. Percent; (+ArcAD - baseline) in brackets.",
            "",
            table,
            "",
            f"Training time: baseline {baseline['train_time_s']:.0f} s, +ArcAD {arcad['train_time_s']:.0f} s.",
            "",
            "Every score kind of each arm: [baseline/results.md](baseline/results.md), "
            "[arcad/results.md](arcad/results.md).",
        ]
        combined["files"] = {"json": str(output / RESULTS_JSON), "markdown": str(output / RESULTS_MD)}
        write_json(output / RESULTS_JSON, combined)
        write_text(output / RESULTS_MD, "\n".join(lines))
        if cfg.verbose:
            print(f"wrote {output / RESULTS_JSON} and {output / RESULTS_MD}", flush=True)
    return combined
