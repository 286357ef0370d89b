"""The decision table: detector x kind of defect -> the measured effect of the paper's ArcAD and of
``calibrate="missed"``.

Each :class:`Decision` names a detector and a kind of defect with the category it was measured on; the measured
effect of each configuration (the paired gain of its arm's ``recon`` score over the baseline) is computed from the
runs, so a row changes with the runs behind it. The advice is written by hand: when a new
configuration is measured, add or edit a row here and regenerate the pages (``--write-docs``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from .tables import BASELINE_KIND, METRIC_LABELS, detector_label, gain_cell, paired_seeds

__all__ = ["CONFIGURATIONS", "DECISIONS", "DECISION_METRICS", "Decision", "configuration_cell", "decisions_markdown"]

#: The metrics of the decision table: one image-level, two of pixel precision.
DECISION_METRICS: tuple[str, ...] = ("i_auroc", "p_f1_max", "aupro")

_FILL = "fill their patches, poorly localised by the detector alone"
_FILL_WELL = "fill their patches, already localised by the detector alone"
_THIN = "thin, already localised by the detector alone"
_THIN_POOR = "thin, poorly localised by the detector alone"


#: The two configurations the table compares: the arm of each and its column heading.
CONFIGURATIONS: tuple[tuple[str, str], ...] = (
    ("arcad", '`preset="paper"`'),
    ("missed", '`calibrate="missed"`'),
)


@dataclasses.dataclass(frozen=True)
class Decision:
    """One row of the decision table: one detector on one kind of defect, both configurations.

    Attributes:
        detector: the detector's name in the harness (``rd4ad``, ``dinomaly``, ``recontrast``).
        defects: the kind of defect, in words.
        category: the category the row was measured on.
        advice: what to do, in a few words (may name evidence that is not in the stored runs).
    """

    detector: str
    defects: str
    category: str
    advice: str


#: The rows, in the order printed.
DECISIONS: tuple[Decision, ...] = (
    Decision("rd4ad", _FILL, "magnetic_tile", "**use the paper's ArcAD**: `missed` gives up half its P-F1-max gain"),
    Decision("dinomaly", _FILL, "magnetic_tile", "**use the paper's ArcAD**: `missed` keeps 70% of its I-AUROC gain"),
    Decision("recontrast", _FILL, "magnetic_tile", "**use the paper's ArcAD**"),
    Decision("rd4ad", _THIN_POOR, "kolektorsdd", "**use it**: the paper's ArcAD or `missed`, about level"),
    Decision("dinomaly", _THIN_POOR, "kolektorsdd", "**use it**: the paper's ArcAD, or `missed` (80-89% of its gain)"),
    Decision("rd4ad", _THIN, "tire", "train without ArcAD (`missed`: level with the baseline, no gain)"),
    Decision("dinomaly", _THIN, "tire",
             "not established: small gains and losses, and on a thin-defect category outside this data the paper's "
             "ArcAD lost P-F1-max (-8.0 and -5.0, 2 seeds, not stored here)"),
    Decision("recontrast", _THIN, "tire", "train without ArcAD: the paper's ArcAD loses every metric on every seed"),
    Decision("rd4ad", _FILL_WELL, "bottle", "train without ArcAD: both lose pixel precision"),
    Decision("dinomaly", _FILL_WELL, "bottle", "train without ArcAD (`missed`: level with the baseline, no gain)"),
)


def _seeds(seeds: Sequence[int]) -> str:
    if not seeds:
        return "none"
    if len(seeds) > 2 and list(seeds) == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(str(s) for s in seeds)


def configuration_cell(table: Mapping[str, Any], arm: str) -> str:
    """One configuration's paired gains over the baseline, ``I-AUROC / P-F1-max / AUPRO (seeds S)``, or
    ``not measured`` when the arm has no run paired with a baseline."""
    seeds = paired_seeds(table, arm, BASELINE_KIND)
    if not seeds:
        return "not measured"
    gains = " / ".join(gain_cell(table, arm, metric) for metric in DECISION_METRICS)
    return f"{gains} (seed{'s' if len(seeds) > 1 else ''} {_seeds(seeds)})"


def decisions_markdown(tables: Mapping[str, Mapping[str, Any]],
                       decisions: Sequence[Decision] = DECISIONS) -> str:
    """The decision table as Markdown: per row and configuration, the paired gains of its ``recon`` score over the
    baseline (mean ± std over the seeds that have both, the bare value for one) on the category named.

    Raises:
        KeyError: a row's category and detector have no runs.
    """
    metrics = " / ".join(METRIC_LABELS[m] for m in DECISION_METRICS)
    header = ["detector", "defects (measured on)", *(f"{label}: {metrics}" for _, label in CONFIGURATIONS), "advice"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in decisions:
        key = f"{row.category}/{row.detector}"
        if key not in tables:
            raise KeyError(f"the decision table names {key}, which has no runs")
        table = tables[key]
        name = table.get("detector") or detector_label(row.detector)
        cells = [name, f"{row.defects} ({row.category})"]
        cells += [configuration_cell(table, arm) for arm, _ in CONFIGURATIONS]
        cells.append(row.advice)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
