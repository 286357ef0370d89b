"""docs/results.md's working-scale tables are what the stored runs give (benchmarks/results), to the digit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import cold_start

ROOT = Path(__file__).resolve().parents[1]
STORED = ROOT / "benchmarks" / "results" / "bench256"
DOC = ROOT / "docs" / "results.md"


def _tables() -> dict:
    records = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((STORED / "runs").rglob("seed*.json"))]
    return cold_start.aggregate(records)


def _body(block: str) -> str:
    """The table lines of a generated block (its heading is free to change)."""
    return "\n".join(line for line in block.splitlines() if line.startswith("|"))


def test_stored_runs_are_compact_and_share_one_setting() -> None:
    paths = sorted((STORED / "runs").rglob("seed*.json"))
    assert paths, f"no stored runs under {STORED}"
    settings = set()
    for path in paths:
        record = json.loads(path.read_text(encoding="utf-8"))
        category, baseline, arm, name = path.relative_to(STORED / "runs").parts
        assert (record["category"], record["baseline"], record["arm"], f"seed{record['seed']}.json") == (
            category, baseline, arm, name)
        assert record["diagnostics"] is None and "/" not in record["split"]  # compact: no history, no paths
        kept = {k: v for k, v in record["settings"].items() if k not in cold_start.STORED_IGNORED}
        settings.add(json.dumps(kept, sort_keys=True))
    assert len(settings) == 1, "the stored runs of one table were made with different settings"


@pytest.mark.parametrize("kind", ["comparison", "ablation"])
def test_every_generated_table_is_in_the_doc(kind: str) -> None:
    text = DOC.read_text(encoding="utf-8")
    for key, table in _tables().items():
        arms = {row.get("arm_name", "baseline") for row in table["rows"]}
        if kind == "ablation" and arms <= {"baseline", "arcad"}:
            continue  # nothing beyond the comparison table
        block = (cold_start.comparison_markdown if kind == "comparison" else cold_start.ablation_markdown)(table)
        assert _body(block) in text, f"docs/results.md lacks the {kind} table of {key} as the stored runs give it"
