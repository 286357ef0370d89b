"""Result tables (Markdown, also printed) and the JSON / Markdown files of a run."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .evaluation import METRICS

__all__ = [
    "METRIC_LABELS",
    "comparison_table",
    "mean_metrics",
    "results_markdown",
    "results_table",
    "write_json",
    "write_text",
]

METRIC_LABELS: dict[str, str] = {"i_auroc": "I-AUROC", "p_auroc": "P-AUROC", "p_f1_max": "P-F1-max", "aupro": "AUPRO"}
#: Metrics are stored as fractions and printed as percentages.
PERCENT: float = 100.0
MEAN_ROW: str = "mean"


def mean_metrics(categories: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """Mean over categories of every score kind and metric: {kind: {metric: value}}."""
    kinds = list(next(iter(categories.values())))
    return {
        kind: {m: sum(c[kind][m] for c in categories.values()) / len(categories) for m in METRICS} for kind in kinds
    }


def _pct(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{PERCENT * value:.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def results_table(result: Mapping[str, Any], kind: str) -> str:
    """One score kind of one run: a row per category and the mean (percent)."""
    header = ["category"] + [METRIC_LABELS[m] for m in METRICS]
    rows = [[c] + [_pct(scores[kind][m]) for m in METRICS] for c, scores in result["categories"].items()]
    rows.append([f"**{MEAN_ROW}**"] + [_pct(result["mean"][kind][m]) for m in METRICS])
    return _table(header, rows)


def comparison_table(baseline: Mapping[str, Any], arcad: Mapping[str, Any], kind: str) -> str:
    """Baseline (reconstruction score) and +ArcAD (score ``kind``) side by side, with the difference."""
    header = ["category"]
    for m in METRICS:
        header += [f"{METRIC_LABELS[m]} base", f"{METRIC_LABELS[m]} +ArcAD"]
    rows = []
    names = list(arcad["categories"]) + [MEAN_ROW]
    for name in names:
        base = baseline["mean"]["recon"] if name == MEAN_ROW else baseline["categories"][name]["recon"]
        ours = arcad["mean"][kind] if name == MEAN_ROW else arcad["categories"][name][kind]
        row = [f"**{name}**" if name == MEAN_ROW else name]
        for m in METRICS:
            delta = PERCENT * (ours[m] - base[m])
            row += [_pct(base[m]), f"{_pct(ours[m])} ({delta:+.1f})"]
        rows.append(row)
    return _table(header, rows)


def results_markdown(result: Mapping[str, Any]) -> str:
    """The Markdown report of one run: headline score first, then every other score kind."""
    cfg = result["config"]
    arm = "+ArcAD" if cfg["arcad"] else "baseline (no ArcAD)"
    lines = [
        f"# {cfg['baseline']} {arm}",
        "",
        f"Setting {cfg['setting']}, encoder {cfg['encoder']}, {cfg['image_size']} px, {cfg['steps']} steps of batch "
        f"{cfg['batch_size']}, seed {cfg['seed']}; training {result['train_time_s']:.0f} s, evaluation "
        f"{result['eval_time_s']:.0f} s. Metrics in percent.",
        "",
    ]
    headline = result["headline"]
    kinds = [headline] + [k for k in result["score_kinds"] if k != headline]
    for kind in kinds:
        title = f"## score: {kind}" + (" (headline)" if kind == headline else "")
        lines += [title, "", results_table(result, kind), ""]
    if result.get("fusion"):
        lines += ["## fused score weights (chosen on training data)", ""]
        for name, fusion in result["fusion"].items():
            weights = ", ".join(f"{k} {v:.1f}" for k, v in fusion["weights"].items())
            auc = fusion["train_p_auroc"]
            lines.append(f"- {name}: {weights}" + (f" (training P-AUROC {_pct(auc)})" if auc is not None else ""))
        lines.append("")
    return "\n".join(lines)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, default=_json_default, allow_nan=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
