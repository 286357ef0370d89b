"""The decision table: each row's measured effect is the paired gain of its arm in the stored runs."""

from __future__ import annotations

import pytest

from benchmarks.coldstart import decisions, load_runs
from benchmarks.coldstart.tables import aggregate, gain_cell, paired_seeds

from helpers import REPO_ROOT


@pytest.fixture(scope="module")
def tables() -> dict:
    return aggregate(load_runs(REPO_ROOT / "benchmarks" / "results" / "bench256"))


def _rows(text: str) -> list[list[str]]:
    return [line.strip("| ").split(" | ") for line in text.splitlines() if line.startswith("| ")][1:]


def test_every_row_names_the_seeds_its_gains_are_paired_on(tables: dict) -> None:
    rows = _rows(decisions.decisions_markdown(tables))
    assert len(rows) == len(decisions.DECISIONS) > 0
    for row, decision in zip(rows, decisions.DECISIONS):
        assert row[0].endswith(", EfficientNet-Lite0")  # every detector named with its encoder
        assert f"({decision.category})" in row[1]
        table = tables[f"{decision.category}/{decision.detector}"]
        for cell, (arm, _) in zip(row[2:4], decisions.CONFIGURATIONS):
            seeds = paired_seeds(table, arm)
            if not seeds:
                assert cell == "not measured"
                continue
            assert cell.endswith(f" {decisions._seeds(seeds)})")
            gains = cell.rsplit(" (", 1)[0].split(" / ")
            assert len(gains) == len(decisions.DECISION_METRICS)
            assert all((" ± " in gain) == (len(seeds) > 1) for gain in gains)  # a spread only over several seeds


def test_the_cells_are_the_paired_gains_of_the_stored_runs(tables: dict) -> None:
    rows = {(r[0], r[1]): r for r in _rows(decisions.decisions_markdown(tables))}
    rd4ad_fill = next(r for k, r in rows.items() if k[0].startswith("RD4AD") and "magnetic_tile" in k[1])
    assert rd4ad_fill[2] == "+20.2 ± 4.6 / +22.4 ± 5.1 / +13.6 ± 2.1 (seeds 0-2)"
    recontrast_thin = next(r for k, r in rows.items() if k[0].startswith("ReContrast") and "tire" in k[1])
    assert recontrast_thin[2] == "-6.1 ± 3.2 / -21.7 ± 1.8 / -1.0 ± 0.8 (seeds 0-2)"
    rd4ad_thin = next(r for k, r in rows.items() if k[0].startswith("RD4AD") and "tire" in k[1])
    table = tables["tire/rd4ad"]
    expected = " / ".join(gain_cell(table, "missed", m) for m in decisions.DECISION_METRICS)
    assert rd4ad_thin[3].startswith(expected + " (seed")


def test_a_row_without_runs_is_an_error(tables: dict) -> None:
    row = decisions.Decision("rd4ad", "blobs", "screw", "-")
    with pytest.raises(KeyError, match="screw/rd4ad"):
        decisions.decisions_markdown(tables, [row])
