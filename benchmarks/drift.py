"""Why ArcAD costs a detector that already localises well: the training diagnostics of paired runs, side by side.

Usage::

    python -m benchmarks.drift RUN.json [RUN.json ...] [--window 100]

Each ``RUN.json`` is a full run record of ``python -m benchmarks.coldstart`` (``OUT/runs/<category>/<detector>/<arm>/
seed<s>.json``, before ``--export`` compacts it: the per-step history is needed). For every run it prints, per window
of ``--window`` steps:

* ``normal_similarity``: the normal patches' mean cosine to their nearest prototype (ArcAD's stats): a fall over
  training is normal texture drifting away from the prototypes;
* ``prototypes_in_use``: prototypes nearest to at least one normal patch of the step;
* ``anomalous_similarity``: the same for the real anomalies (what eq. 8 pushes);
* ``anomalous_patches`` and ``calibrated_patches``: the real anomalies of a step and those eq. 8-9 took (fewer
  with ``calibrate="missed"``: the defects the detector's own map already finds are left out);
* the reconstruction loss;
* on the logged steps, each term's gradient on the bottleneck (global L2 norm over its parameters, the ArcAD terms
  times their lambdas) and its cosine with the reconstruction loss's gradient;

and once per run: the steps whose batch held no anomalous patch, and the decoder's error on the normal test images and
on the defect pixels (the reconstruction map's mean), with the run's scores. Nothing is trained.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "summarize_run", "windows"]

#: History keys averaged per window, in the order printed.
WINDOW_KEYS: tuple[str, ...] = (
    "loss_recon", "normal_similarity", "anomalous_similarity", "prototypes_in_use", "loss_dgc", "anomalous_patches",
    "calibrated_patches",
)
#: Gradient keys of the logged steps.
GRADIENT_KEYS: tuple[str, ...] = ("grad_recon", "grad_spm", "grad_dgc", "grad_cls", "cos_spm", "cos_dgc", "cos_cls")
PERCENT: float = 100.0


def windows(history: Sequence[Mapping[str, Any]], size: int) -> list[dict[str, Any]]:
    """Means of :data:`WINDOW_KEYS` over consecutive windows of ``size`` steps (keys absent from a window: NaN)."""
    out = []
    for start in range(0, len(history), size):
        chunk = history[start : start + size]
        row: dict[str, Any] = {"steps": f"{chunk[0]['step']}-{chunk[-1]['step']}"}
        for key in WINDOW_KEYS:
            values = [r[key] for r in chunk if key in r and r[key] is not None and math.isfinite(r[key])]
            row[key] = statistics.fmean(values) if values else math.nan
        out.append(row)
    return out


def summarize_run(record: Mapping[str, Any], size: int) -> dict[str, Any]:
    """The diagnostics of one run record (see the module docstring)."""
    (model,) = record["diagnostics"].values()
    history = model["history"]
    arcad_steps = [r for r in history if "anomalous_patches" in r]
    logged = [r for r in history if "grad_recon" in r]
    return {
        "name": f"{record['category']} / {record['baseline']} / {record['arm']} / seed {record['seed']}",
        "windows": windows(history, size),
        "gradients": [{k: r.get(k, math.nan) for k in ("step", *GRADIENT_KEYS)} for r in logged],
        "steps_without_defect": sum(r["anomalous_patches"] == 0 for r in arcad_steps),
        "arcad_steps": len(arcad_steps),
        "anomalous_patches_mean": statistics.fmean(r["anomalous_patches"] for r in arcad_steps) if arcad_steps else 0,
        "test_recon_error": next(iter(model.get("test_recon_error", {}).values()), {}),
        "scores": record["scores"]["recon"],
    }


def _cell(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def markdown(summary: Mapping[str, Any]) -> str:
    """One run's summary as markdown."""
    lines = [f"#### {summary['name']}", ""]
    scores = summary["scores"]
    error = summary["test_recon_error"]
    text = (
        "recon score I-AUROC / P-AUROC / P-F1-max / AUPRO: "
        + " / ".join(f"{PERCENT * scores[m]:.1f}" for m in ("i_auroc", "p_auroc", "p_f1_max", "aupro"))
        + f"; reconstruction map on normal test images {_cell(error.get('normal', math.nan), 4)}, on defect pixels "
        f"{_cell(error.get('defect', math.nan), 4)}"
    )
    if summary["arcad_steps"]:
        text += (
            f"; steps without an anomalous patch: {summary['steps_without_defect']} of {summary['arcad_steps']} "
            f"(mean {summary['anomalous_patches_mean']:.1f} anomalous patches a step)"
        )
    lines.append(text)
    lines += ["", "| steps | " + " | ".join(WINDOW_KEYS) + " |", "|---" * (len(WINDOW_KEYS) + 1) + "|"]
    for row in summary["windows"]:
        lines.append(f"| {row['steps']} | " + " | ".join(_cell(row[k]) for k in WINDOW_KEYS) + " |")
    if summary["gradients"]:
        lines += ["", "| step | " + " | ".join(GRADIENT_KEYS) + " |", "|---" * (len(GRADIENT_KEYS) + 1) + "|"]
        for row in summary["gradients"]:
            lines.append(f"| {row['step']} | " + " | ".join(_cell(row[k], 4) for k in GRADIENT_KEYS) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="full run records (with their per-step history)")
    p.add_argument("--window", type=int, default=100, help="steps per window (default: 100)")
    args = p.parse_args(argv)
    for path in args.runs:
        record = json.loads(path.read_text())
        print(markdown(summarize_run(record, args.window)))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
