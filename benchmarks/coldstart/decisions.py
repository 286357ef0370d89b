"""The decision table: detector x kind of defect -> configuration -> measured effect, from the stored runs.

Each :class:`Decision` names a detector, a kind of defect with the category it was measured on, and the arm that
holds the configuration; the measured effect (the paired gain of the arm's ``recon`` score over the baseline) is
computed from the runs, so a row changes with the runs behind it. The advice is written by hand: when a new
configuration is measured, add or edit a row here and regenerate the pages (``--write-docs``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from .arms import get_arm
from .tables import BASELINE_KIND, METRIC_LABELS, detector_label, gain_cell, paired_seeds

__all__ = ["DECISIONS", "DECISION_METRICS", "Decision", "decisions_markdown"]

#: The metrics of the decision table: one image-level, two of pixel precision.
DECISION_METRICS: tuple[str, ...] = ("i_auroc", "p_f1_max", "aupro")

_FILL = "fill their patches, poorly localised by the detector alone"
_FILL_WELL = "fill their patches, already localised by the detector alone"
_THIN = "thin, already localised by the detector alone"
_THIN_POOR = "thin, poorly localised by the detector alone"


@dataclasses.dataclass(frozen=True)
class Decision:
    """One row of the decision table.

    Attributes:
        detector: the detector's name in the harness (``rd4ad``, ``dinomaly``, ``recontrast``).
        defects: the kind of defect, in words.
        category: the category the row was measured on.
        arm: the arm of :data:`~benchmarks.coldstart.arms.ARMS` that holds the configuration.
        configuration: how a user sets it.
        advice: what to do, in a few words (may name evidence that is not in the stored runs).
    """

    detector: str
    defects: str
    category: str
    arm: str
    configuration: str
    advice: str

    def __post_init__(self) -> None:
        get_arm(self.arm)


_PAPER = '`ArcAD(dim, K)` (`preset="paper"`)'

#: The rows, in the order printed.
DECISIONS: tuple[Decision, ...] = (
    Decision("rd4ad", _FILL, "magnetic_tile", "arcad", _PAPER, "**use it**"),
    Decision("dinomaly", _FILL, "magnetic_tile", "arcad", _PAPER, "**use it**"),
    Decision("recontrast", _FILL, "magnetic_tile", "arcad", _PAPER, "**use it**"),
    Decision("rd4ad", _THIN, "tire", "arcad", _PAPER, "do not use it: pixel precision falls on every seed"),
    Decision("rd4ad", _THIN, "tire", "mask_quarter", "`ArcAD(..., mask_threshold=0.25)`",
             "level with the baseline, no gain: train without ArcAD"),
    Decision("rd4ad", _THIN, "tire", "mask_fraction", '`ArcAD(..., mask_weighting="fraction")`',
             "level with the baseline, no gain: train without ArcAD"),
    Decision("dinomaly", _THIN, "tire", "arcad", _PAPER,
             "not established: I-AUROC up on tire but P-F1-max down on 2 of 3 seeds, and on a thin-defect "
             "category outside this data P-F1-max fell by 8.0 and 5.0 (2 seeds, not stored here): check it on "
             "your own split"),
    Decision("recontrast", _THIN, "tire", "arcad", _PAPER, "do not use it: every metric falls on every seed"),
    Decision("rd4ad", _THIN_POOR, "kolektorsdd", "arcad", _PAPER,
             "**use it** (one seed so far); ArcAD's own maps score higher still"),
    Decision("dinomaly", _THIN_POOR, "kolektorsdd", "arcad", _PAPER,
             "**use it** (one seed so far); ArcAD's own maps score higher still"),
    Decision("rd4ad", _FILL_WELL, "bottle", "arcad", _PAPER,
             "do not use it (one seed so far): pixel precision falls, as on tire"),
    Decision("dinomaly", _FILL_WELL, "bottle", "arcad", _PAPER,
             "do not use it (one seed so far): pixel precision falls"),
)


def _seeds(seeds: Sequence[int]) -> str:
    if not seeds:
        return "none"
    if len(seeds) > 2 and list(seeds) == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(str(s) for s in seeds)


def decisions_markdown(tables: Mapping[str, Mapping[str, Any]],
                       decisions: Sequence[Decision] = DECISIONS) -> str:
    """The decision table as Markdown: per row, the paired gain of the arm's ``recon`` score over the baseline
    (mean ± std over the seeds that have both, the bare value for one) on the category named.

    Raises:
        KeyError: a row's category and detector have no runs.
    """
    header = ["detector", "defects (measured on)", "configuration", "seeds",
              *(METRIC_LABELS[m] for m in DECISION_METRICS), "advice"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in decisions:
        key = f"{row.category}/{row.detector}"
        if key not in tables:
            raise KeyError(f"the decision table names {key}, which has no runs")
        table = tables[key]
        name = table.get("detector") or detector_label(row.detector)
        cells = [name, f"{row.defects} ({row.category})", row.configuration,
                 _seeds(paired_seeds(table, row.arm, BASELINE_KIND))]
        cells += [gain_cell(table, row.arm, metric) for metric in DECISION_METRICS]
        cells.append(row.advice)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
