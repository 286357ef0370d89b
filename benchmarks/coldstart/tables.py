"""Statistics and Markdown tables of the cold-start benchmark, built from run records alone (no data, no model).

* :func:`aggregate` groups the records into one table per category and detector: every arm's every score kind,
  mean and sample standard deviation over seeds, and the gain over the baseline's ``recon`` score taken per seed
  on the shared split (only seeds that have both arms enter a gain);
* :func:`markdown_table` (``tables/<category>_<detector>.md``), :func:`comparison_markdown` (``comparison.md``,
  docs/results.md's layout) and :func:`ablation_markdown` (``ablation.md``, the paper's Table 4 layout) render it;
* :func:`fusion_summary` and :func:`diagnostics_entries` give the fused score's fit and the training diagnostics
  of every run; :func:`write_tables` writes all of it to an output folder.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .arms import ARM_NAMES, get_arm
from .records import FIRST_WINDOW, LAST_WINDOW, RunRecord, write_json, write_text

__all__ = [
    "BASELINE_KIND",
    "DETECTOR_LABELS",
    "ENCODER_LABELS",
    "FUSED_KINDS",
    "METRICS",
    "METRIC_LABELS",
    "SCORE_KINDS",
    "ablation_markdown",
    "aggregate",
    "comparison_markdown",
    "detector_label",
    "diagnostics_entries",
    "diagnostics_markdown",
    "fusion_markdown",
    "fusion_summary",
    "markdown_table",
    "mean_std",
    "resolved_settings",
    "write_tables",
]

#: Score kinds of a +ArcAD run (a baseline run has ``recon`` only).
SCORE_KINDS: tuple[str, ...] = ("recon", "prototype", "discriminator", "fused", "fused_equal")
#: The baseline is always scored by reconstruction.
BASELINE_KIND: str = "recon"
#: The maps the fused score weighs, in the order of its weights.
FUSED_KINDS: tuple[str, ...] = ("recon", "prototype", "discriminator")
#: Metrics in the order of the tables.
METRICS: tuple[str, ...] = ("i_auroc", "p_auroc", "p_f1_max", "aupro")
METRIC_LABELS: dict[str, str] = {"i_auroc": "I-AUROC", "p_auroc": "P-AUROC", "p_f1_max": "P-F1-max", "aupro": "AUPRO"}
#: How a result names each detector of the examples: what it is modelled on, not the published model.
DETECTOR_LABELS: dict[str, str] = {
    "rd4ad": "RD4AD-style",
    "dinomaly": "Dinomaly-style",
    "recontrast": "ReContrast-style",
}
#: How a result names the frozen encoder a detector ran on.
ENCODER_LABELS: dict[str, str] = {
    "efficientnet_lite0": "EfficientNet-Lite0",
    "resnet18": "ResNet-18",
    "wide_resnet50_2": "Wide-ResNet-50-2",
    "dinov2_vits14_reg": "DINOv2-reg ViT-S/14",
    "dinov2_vitb14_reg": "DINOv2-reg ViT-B/14",
}


def detector_label(detector: str, encoder: str | None = None) -> str:
    """A detector named with its encoder, as every reported result names it: ``"RD4AD-style, EfficientNet-Lite0"``."""
    name = DETECTOR_LABELS.get(detector, detector)
    if not encoder:
        return name
    return f"{name}, {ENCODER_LABELS.get(encoder, encoder)}"


# ------------------------------------------------------------------------------------------ statistics


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


def _fmt_runs(mean: float, std: float, num_seeds: int, signed: bool = False) -> str:
    """``mean ± std`` over several seeds, the bare value for one."""
    if num_seeds == 1 and math.isfinite(mean):
        return f"{mean:{'+' if signed else ''}.1f}"
    return _fmt(mean, std, signed=signed)


def _row(label: str, kind: str, runs: Sequence[RunRecord], reference: Mapping[int, RunRecord]) -> dict[str, Any]:
    """One table row: metrics of ``kind`` over ``runs``; gains against the baseline runs ``reference`` (by seed),
    over the seeds that have both."""
    row: dict[str, Any] = {"arm": label, "score": kind, "seeds": sorted(r.seed for r in runs), "metrics": {}}
    paired = [r for r in runs if r.seed in reference]
    for metric in METRICS:
        values = [r.percent(kind, metric) for r in runs]
        mean, std = mean_std(values)
        entry: dict[str, Any] = {"mean": mean, "std": std, "values": values}
        if paired:
            ours = [r.percent(kind, metric) for r in paired]
            theirs = [reference[r.seed].percent(BASELINE_KIND, metric) for r in paired]
            entry["gain"] = mean_std(ours)[0] - mean_std(theirs)[0]
            entry["paired_gain_mean"], entry["paired_gain_std"] = mean_std([a - b for a, b in zip(ours, theirs)])
            entry["gain_seeds"] = [r.seed for r in paired]
        row["metrics"][metric] = entry
    for key in ("train_time_s", "eval_time_s", "wall_time_s"):
        row[key] = dict(zip(("mean", "std"), mean_std([float(getattr(r, key)) for r in runs])))
    return row


def aggregate(records: Sequence[RunRecord]) -> dict[str, dict[str, Any]]:
    """Group run records into tables keyed ``"<category>/<detector>"``.

    Each table has ``category``, ``baseline`` (the detector), ``detector`` (its name with its encoder),
    ``rows`` (the baseline's ``recon`` row first, then one row per score kind of each other arm present, in the
    order of :data:`~benchmarks.coldstart.arms.ARMS`), ``train_overhead`` (mean +ArcAD training time over mean
    baseline training time) and ``num_seeds`` (seeds with both the baseline and +ArcAD). Only seeds that have
    both arms enter the gains.
    """
    groups: dict[tuple[str, str], dict[str, dict[int, RunRecord]]] = {}
    encoders: dict[tuple[str, str], set[str]] = {}
    for record in records:
        get_arm(record.arm)  # an arm this benchmark does not know is an error, not a silently missing row
        key = (record.category, record.baseline)
        groups.setdefault(key, {arm: {} for arm in ARM_NAMES})[record.arm][record.seed] = record
        if record.encoder:
            encoders.setdefault(key, set()).add(record.encoder)
    tables: dict[str, dict[str, Any]] = {}
    for (category, baseline), arms in sorted(groups.items()):
        base, cal = arms["baseline"], arms["arcad"]
        rows = []
        if base:
            rows.append(_row(get_arm("baseline").label, BASELINE_KIND, [base[s] for s in sorted(base)], {}))
        for name in ARM_NAMES[1:]:
            runs = arms[name]
            if not runs:
                continue
            paired = {s: base[s] for s in runs if s in base}
            kinds = [k for k in SCORE_KINDS if any(k in r.scores for r in runs.values())]
            for kind in kinds:
                row = _row(get_arm(name).label, kind, [runs[s] for s in sorted(runs)], paired)
                row["arm_name"] = name
                rows.append(row)
        overhead = math.nan
        if base and cal:
            base_t, _ = mean_std([r.train_time_s for r in base.values()])
            cal_t, _ = mean_std([r.train_time_s for r in cal.values()])
            overhead = cal_t / base_t if base_t > 0 else math.nan
        encoder = sorted(encoders.get((category, baseline), set()))
        tables[f"{category}/{baseline}"] = {
            "category": category,
            "baseline": baseline,
            "detector": detector_label(baseline, encoder[0] if len(encoder) == 1 else None),
            "num_seeds": len(set(base) & set(cal)),
            "rows": rows,
            "train_overhead": overhead,
        }
    return tables


def _row_arm(row: Mapping[str, Any]) -> str:
    """The arm name of a row of :func:`aggregate`."""
    return str(row.get("arm_name", "baseline"))


def _selected(table: Mapping[str, Any], arms: Sequence[str] | None) -> list[Mapping[str, Any]]:
    if arms is None:
        return list(table["rows"])
    for name in arms:
        get_arm(name)
    return [row for row in table["rows"] if _row_arm(row) in arms]


def _title(table: Mapping[str, Any]) -> str:
    return f"{table['category']}: {table.get('detector') or table['baseline']}"


# ------------------------------------------------------------------------------------------ Markdown


def markdown_table(table: Mapping[str, Any]) -> str:
    """A Markdown table of :func:`aggregate`'s output for one category and detector (percent, mean ± std)."""
    header = ["arm", "score"] + [METRIC_LABELS[m] for m in METRICS] + [
        f"gain {METRIC_LABELS[m]}" for m in METRICS
    ] + ["seeds", "train s", "eval s"]
    lines = [
        f"### {_title(table)}",
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


def _metric_cells(row: Mapping[str, Any], metrics: Sequence[str] = METRICS) -> list[str]:
    """One cell per metric of a table row: ``mean ± std`` over its seeds, then the paired gain in brackets."""
    n = len(row["seeds"])
    cells = []
    for metric in metrics:
        entry = row["metrics"][metric]
        cell = _fmt_runs(entry["mean"], entry["std"], n)
        if "gain" in entry:
            gains = len(entry["gain_seeds"])
            cell += f" ({_fmt_runs(entry['paired_gain_mean'], entry['paired_gain_std'], gains, signed=True)})"
        cells.append(cell)
    return cells


def comparison_markdown(table: Mapping[str, Any], arms: Sequence[str] | None = None) -> str:
    """One category and detector as docs/results.md prints it: a line per arm and score kind, each metric as
    ``mean ± std`` over the seeds with the gain over the baseline's ``recon`` score in brackets (taken per seed on
    the shared split, then mean ± std); one seed prints the bare values.

    Args:
        table: one value of :func:`aggregate`'s output.
        arms: the arms to show (names of :data:`~benchmarks.coldstart.arms.ARMS`); all by default.
    """
    header = ["arm", "score", "seeds", *(METRIC_LABELS[m] for m in METRICS)]
    lines = [f"#### {_title(table)}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in _selected(table, arms):
        cells = [row["arm"], row["score"], str(len(row["seeds"]))]
        cells += _metric_cells(row)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ablation_markdown(table: Mapping[str, Any], arms: Sequence[str] | None = None) -> str:
    """The paper's Table 4 layout for one category and detector: one line per arm, its ``recon`` score with the
    gain over the baseline in brackets, and the pixel AUROC of ArcAD's own maps (``prototype``, ``discriminator``)
    where the arm has them (percent; mean ± std over the arm's seeds, the bare value for one seed).

    Args:
        table: one value of :func:`aggregate`'s output.
        arms: the arms to show; all by default.
    """
    header = ["arm", "seeds", *(METRIC_LABELS[m] for m in METRICS), "prototype map P-AUROC",
              "discriminator map P-AUROC"]
    lines = [f"#### {_title(table)}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_arm: dict[str, dict[str, Mapping[str, Any]]] = {}
    for row in _selected(table, arms):
        by_arm.setdefault(row["arm"], {})[row["score"]] = row
    for label, rows in by_arm.items():
        recon = rows.get(BASELINE_KIND)
        if recon is None:
            continue
        cells = [label, str(len(recon["seeds"]))]
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


def gain_cell(table: Mapping[str, Any], arm: str, metric: str, kind: str = BASELINE_KIND) -> str:
    """The paired gain of one arm's score kind over the baseline in one metric: ``+x ± s`` over its seeds (the
    bare value for one seed), ``n/a`` when the arm has no run paired with a baseline."""
    for row in table["rows"]:
        if _row_arm(row) == arm and row["score"] == kind:
            entry = row["metrics"][metric]
            if "gain" in entry:
                return _fmt_runs(entry["paired_gain_mean"], entry["paired_gain_std"], len(entry["gain_seeds"]),
                                 signed=True)
    return "n/a"


def paired_seeds(table: Mapping[str, Any], arm: str, kind: str = BASELINE_KIND) -> list[int]:
    """The seeds on which an arm's score kind is paired with the baseline."""
    for row in table["rows"]:
        if _row_arm(row) == arm and row["score"] == kind:
            return list(row["metrics"][METRICS[0]].get("gain_seeds", []))
    return []


# ------------------------------------------------------------------------------------------ fusion, diagnostics


def fusion_summary(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
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
        fusion = (r.fusion or {}).get(r.category)
        if r.arm == "baseline" or not isinstance(fusion, Mapping):
            continue
        by_kind = fusion.get("train_p_auroc_by_kind") or {}
        rows.append(
            {
                "category": r.category,
                "baseline": r.baseline,
                "arm": r.arm,
                "seed": r.seed,
                "fitted_on": "withheld" if fusion.get("held_out") else "training",
                "fit_images": fusion.get("fit_images"),
                "weights": {k: float(fusion["weights"].get(k, math.nan)) for k in FUSED_KINDS},
                "train_p_auroc": {k: 100.0 * float(by_kind.get(k, math.nan)) for k in FUSED_KINDS},
                "test_p_auroc": {k: r.percent(k, "p_auroc") for k in FUSED_KINDS},
            }
        )
    return rows


def fusion_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """:func:`fusion_summary` as a Markdown table."""
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


def diagnostics_entries(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """One entry per run: ``category``, ``baseline``, ``arm``, ``seed`` and its diagnostics ``summary``."""
    return [
        {"category": r.category, "baseline": r.baseline, "arm": r.arm, "seed": r.seed, "summary": r.summary()}
        for r in records
    ]


def diagnostics_markdown(entries: Sequence[Mapping[str, Any]]) -> str:
    """:func:`diagnostics_entries` as a Markdown table, one line per run."""
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


def resolved_settings(records: Sequence[RunRecord]) -> dict[str, dict[str, Any]]:
    """What the harness chose per detector for the settings left automatic: K, eval stride, patch grid and
    patches per step (from the +ArcAD runs' resolved configuration and full diagnostics)."""
    resolved: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.arm != "arcad" or r.baseline in resolved:
            continue
        config = r.harness_config or {}
        diag = r.model_diagnostics()
        resolved[r.baseline] = {
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


def write_tables(
    output: Path, records: Sequence[RunRecord], settings: Mapping[str, Any], command: str,
    machine: Mapping[str, Any],
) -> dict[str, Any]:
    """Write the tables of ``records`` to ``output``: ``tables/<category>_<detector>.md`` / ``.json``,
    ``comparison.md``, ``ablation.md``, ``diagnostics.md`` / ``.json``, ``fusion.md`` / ``.json`` and
    ``summary.md`` / ``summary.json``.

    Args:
        output: the benchmark's output folder.
        records: the runs of the tables.
        settings: the benchmark's settings (stated in the output).
        command: the command that made the runs.
        machine: the machine description (``cpu``, ``cpu_count``, ``torch_threads``, ``cuda``, ``python``,
            ``torch``); ``torch_threads`` is replaced by what the runs used.

    Returns:
        The summary (also written to ``output/summary.json``).
    """
    output = Path(output)
    machine = dict(machine)
    threads = sorted({r.torch_threads for r in records if r.torch_threads})
    if threads:  # what the runs used, which a --tables-only call need not share
        machine["torch_threads"] = threads[0] if len(threads) == 1 else threads
    tables = aggregate(records)
    for table in tables.values():
        stem = f"{table['category']}_{table['baseline']}"
        write_json(output / "tables" / f"{stem}.json", {"config": dict(settings), "machine": machine, **table})
        write_text(output / "tables" / f"{stem}.md", markdown_table(table))
    diagnostics = diagnostics_entries(records)
    write_text(
        output / "comparison.md",
        "# Baseline against every arm, every score kind (percent)\n\n"
        + "\n".join(comparison_markdown(t) for t in tables.values()),
    )
    write_text(
        output / "ablation.md",
        "# Every arm against its baseline (recon score; ArcAD's own maps' P-AUROC)\n\n"
        + "\n".join(ablation_markdown(t) for t in tables.values()),
    )
    write_json(output / "diagnostics.json", diagnostics)
    write_text(output / "diagnostics.md", "# Training diagnostics\n\n" + diagnostics_markdown(diagnostics))
    fusion = fusion_summary(records)
    write_json(output / "fusion.json", fusion)
    write_text(output / "fusion.md", "# Fused score: weights and in-sample bias\n\n" + fusion_markdown(fusion))
    resolved = resolved_settings(records)
    summary = {
        "config": dict(settings),
        "resolved": resolved,
        "command": command,
        "machine": machine,
        "tables": tables,
        "diagnostics": diagnostics,
        "total_wall_time_s": sum(float(r.wall_time_s) for r in records),
    }
    write_json(output / "summary.json", summary)
    text = ["# Cold-start benchmark", "", _config_lines(settings, machine, command)]
    for baseline, values in resolved.items():
        text.append(f"- {baseline}: " + ", ".join(f"{k} {v}" for k, v in values.items()))
    text += ["", "## Results (percent)", ""]
    text += ["Gains are +ArcAD minus the baseline's reconstruction score, per seed on the same split, "
             "then mean ± std over seeds.", ""]
    text += [markdown_table(t) for t in tables.values()]
    text += [f"Total wall time of the runs: {summary['total_wall_time_s'] / 60:.1f} min.", ""]
    text += ["## Training diagnostics", "", diagnostics_markdown(diagnostics)]
    text += ["## Fused score", "", fusion_markdown(fusion)]
    write_text(output / "summary.md", "\n".join(text))
    return summary
